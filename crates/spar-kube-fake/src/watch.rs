//! Watch streams: newline-delimited JSON events from the history, then live, with bookmarks,
//! timeouts and 410 Expired.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::request::{JSON, Params, Target, in_scope, selector, served};
use crate::select::Selector;
use crate::store::{ApiError, Event, EventType};
use crate::{Inner, ResourceType};

/// How often a watch with `allowWatchBookmarks=true` gets a BOOKMARK.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// One open watch stream.
struct Watch {
    srv: Arc<Inner>,
    rt: ResourceType,
    reg_id: u64,
    ns: Option<String>,
    selector: Selector,
    bookmarks: bool,
    compactions: u64,
    /// Every event up to this resource version has been sent (or filtered out).
    cursor: u64,
}

/// Starts a watch: `resourceVersion` unset or `"0"` (or `sendInitialEvents=true`) first sends
/// the current objects as ADDED; a compacted resource version gets one 410 ERROR event.
pub(crate) fn watch(srv: &Arc<Inner>, t: Target, params: &Params) -> Result<Response, ApiError> {
    let selector = selector(params)?;
    let flag = |k: &str| params.get(k).map(|v| v == "true" || v == "1");
    let timeout = match params.get("timeoutSeconds").filter(|v| !v.is_empty()) {
        Some(v) => v.parse::<u64>().map_err(|_| ApiError::bad_request("invalid timeoutSeconds"))?,
        None => 0,
    };
    let since = match params.get("resourceVersion").map_or("", String::as_str) {
        "" | "0" => None,
        rv => Some(rv.parse::<u64>().map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?),
    };
    let send_initial = flag("sendInitialEvents");
    let store = srv.lock();
    let mut w = Watch {
        srv: srv.clone(),
        rt: t.rt,
        reg_id: t.reg_id,
        ns: t.ns,
        selector,
        bookmarks: flag("allowWatchBookmarks").unwrap_or(false),
        compactions: store.compactions,
        cursor: store.rv,
    };
    let mut initial = Vec::new();
    if send_initial.unwrap_or(since.is_none()) {
        // Like the real server: synthetic ADDED events for the current state.
        let objects = store.objects.get(&w.rt.gr()).into_iter().flatten();
        for obj in objects.map(|(_, o)| o).filter(|o| w.in_scope(o)) {
            initial.push(event_line("ADDED", &served(obj, &w.rt)));
        }
        if send_initial == Some(true) && w.bookmarks {
            initial.push(w.bookmark(true));
        }
    } else if let Some(since) = since {
        w.cursor = since; // `poll` answers 410 when it is compacted
    }
    drop(store);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let span = tracing::debug_span!("watch", resource = %w.rt.qualified(), ns = ?w.ns);
    let timeout = (timeout > 0).then(|| Duration::from_secs(timeout));
    tokio::spawn(w.run(initial, timeout, tx).instrument(span));
    let body = futures::stream::unfold(rx, |mut rx| async move { Some((Ok::<_, Infallible>(rx.recv().await?), rx)) });
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, JSON)], Body::from_stream(body)).into_response())
}

impl Watch {
    /// Sends `initial`, then every new event, until the client goes away, the timeout passes or
    /// `poll` says the stream must end.
    async fn run(mut self, mut lines: Vec<String>, timeout: Option<Duration>, tx: mpsc::Sender<Bytes>) {
        let mut changes = self.srv.changes.subscribe();
        let timed_out = async move {
            match timeout {
                Some(timeout) => tokio::time::sleep(timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timed_out);
        let mut ticks = tokio::time::interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
        let mut bookmark_due = false;
        loop {
            changes.borrow_and_update();
            let (new, end) = self.poll();
            lines.extend(new);
            if std::mem::take(&mut bookmark_due) {
                lines.push(self.bookmark(false));
            }
            for line in lines.drain(..) {
                if tx.send(line.into()).await.is_err() {
                    return;
                }
            }
            if end {
                return;
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = ticks.tick(), if self.bookmarks => bookmark_due = true,
                () = &mut timed_out => {
                    if self.bookmarks {
                        let _ = tx.send(self.bookmark(false).into()).await;
                    }
                    return;
                }
                () = tx.closed() => return,
            }
        }
    }

    /// The lines for every new event, and whether the stream must end (compaction, the
    /// resource type went away, or the history no longer reaches back to the cursor).
    fn poll(&mut self) -> (Vec<String>, bool) {
        let store = self.srv.lock();
        if store.compactions != self.compactions {
            return (Vec::new(), true);
        }
        if self.cursor < store.expired_below {
            return (vec![expired_line(self.cursor, store.expired_below)], true);
        }
        let start = store.history.partition_point(|e| e.rv <= self.cursor);
        let gr = self.rt.gr();
        let lines = store.history.range(start..).filter(|e| e.gr == gr).filter_map(|e| self.line(e)).collect();
        self.cursor = self.cursor.max(store.rv); // a watch may start from a future version
        let registered =
            store.by_plural(&self.rt.group, &self.rt.version, &self.rt.plural).is_some_and(|r| r.id == self.reg_id);
        (lines, !registered)
    }

    fn in_scope(&self, obj: &Value) -> bool {
        in_scope(self.ns.as_deref(), &self.selector, obj)
    }

    /// The event as this watcher sees it: a modification that makes an object start or stop
    /// matching becomes ADDED or DELETED, as on the real API server.
    fn line(&self, e: &Event) -> Option<String> {
        let now = self.in_scope(&e.object);
        let kind = match e.kind {
            EventType::Added if now => "ADDED",
            EventType::Deleted if now => "DELETED",
            EventType::Modified => match (e.old.as_ref().is_some_and(|o| self.in_scope(o)), now) {
                (true, true) => "MODIFIED",
                (false, true) => "ADDED",
                (true, false) => "DELETED",
                (false, false) => return None,
            },
            _ => return None,
        };
        Some(event_line(kind, &served(&e.object, &self.rt)))
    }

    fn bookmark(&self, initial_events_end: bool) -> String {
        let mut meta = json!({"resourceVersion": self.cursor.to_string()});
        if initial_events_end && let Some(m) = meta.as_object_mut() {
            m.insert("annotations".into(), json!({"k8s.io/initial-events-end": "true"}));
        }
        let object = json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta});
        event_line("BOOKMARK", &object)
    }
}

fn event_line(kind: &str, object: &Value) -> String {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    line
}

fn expired_line(rv: u64, oldest: u64) -> String {
    let message = format!("too old resource version: {rv} ({oldest})");
    event_line("ERROR", &ApiError::gone(message).to_status())
}
