//! Idle HTTP/2 connections hold no buffers: the vendored h2's patch (vendor/README.md).
//!
//! Every proxy keeps one connection open for its life; the published h2 kept a 16 KiB
//! write buffer, a read buffer grown to the largest frame and a 4 KiB HPACK buffer on
//! each, idle or not. This binary counts live heap bytes (its own allocator), runs
//! connections through a large request and response as Envoy's EDS exchange is, lets
//! them go idle and checks what each still holds. One test per binary: the count is
//! process-wide.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

#[allow(unsafe_code)]
// SAFETY: every call is forwarded to the system allocator with the caller's arguments;
// only a counter is updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as the caller's contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as the caller's contract.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as the caller's contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Connections opened; each is a client and a server side in this process.
const CONNECTIONS: usize = 40;
/// The size of a large mesh's EDS request (4,000 cluster names) and of its response.
const LARGE: usize = 220 * 1024;

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
}

/// One connection: a long-lived stream (as ADS) that carries a large request and a
/// large response, then stays open and idle. Returns what must live on.
async fn exchange(
    listener: &tokio::net::TcpListener,
) -> (h2::client::SendRequest<Bytes>, h2::SendStream<Bytes>, h2::RecvStream, h2::server::SendResponse<Bytes>) {
    let addr = listener.local_addr().expect("addr");
    let (client_io, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    let (server_io, _) = accepted.expect("accept");
    let client_io = client_io.expect("connect");
    // As Envoy and tonic do: without it small frames wait for delayed ACKs.
    client_io.set_nodelay(true).expect("nodelay");
    server_io.set_nodelay(true).expect("nodelay");
    let (client, server) = tokio::join!(h2::client::handshake(client_io), h2::server::handshake(server_io));
    let (mut client, client_conn) = client.expect("client handshake");
    let mut server = server.expect("server handshake");
    tokio::spawn(async move { client_conn.await.ok() });

    let request = http::Request::post("http://spar/envoy.service.discovery.v3.AggregatedDiscoveryService/x")
        .body(())
        .expect("request");
    let (response, mut send) = client.send_request(request, false).expect("send request");
    send.send_data(Bytes::from(vec![7u8; LARGE]), false).expect("send data");

    let (req, mut respond) = server.accept().await.expect("a stream").expect("accepted");
    tokio::spawn(async move { while server.accept().await.is_some() {} });
    let mut body = req.into_body();
    let mut got = 0;
    while got < LARGE {
        let data = body.data().await.expect("data").expect("ok");
        got += data.len();
        body.flow_control().release_capacity(data.len()).expect("release");
    }
    let mut out = respond.send_response(http::Response::new(()), false).expect("respond");
    out.send_data(Bytes::from(vec![9u8; LARGE]), false).expect("send response");
    let mut recv = response.await.expect("response").into_body();
    let mut got = 0;
    while got < LARGE {
        let data = recv.data().await.expect("data").expect("ok");
        got += data.len();
        recv.flow_control().release_capacity(data.len()).expect("release");
    }
    drop(out);
    (client, send, recv, respond)
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_holds_no_buffers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    // One connection first, so that what is allocated once (runtime, tables) is not
    // counted against the rest.
    let first = exchange(&listener).await;
    settle().await;
    let before = LIVE.load(Ordering::Relaxed);
    let mut open = Vec::new();
    for _ in 0..CONNECTIONS {
        open.push(exchange(&listener).await);
    }
    settle().await;
    let per_connection = (LIVE.load(Ordering::Relaxed) - before) / CONNECTIONS as isize;
    // Published h2 0.4.20: 90 KB (its buffers are about 36 KB a side). With the patch,
    // 17 KB: what is left is streams, HPACK tables, tasks and sockets.
    assert!(per_connection < 40 * 1024, "an idle connection (both sides) holds {per_connection} bytes");
    drop((first, open));
}
