//! Pods in network namespaces for capture-mode tests: a bridge in the root namespace,
//! one namespace per pod with a veth on the bridge, processes started inside with
//! `ip netns exec`. Everything is removed on drop.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("{} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A bridge and its pods.
#[derive(Debug)]
pub struct Network {
    id: u8,
    bridge: String,
    pods: Vec<String>,
    next: u8,
}

impl Network {
    /// A new network `10.123.<id>.0/24`; the root namespace is `.1`.
    pub fn new(id: u8) -> anyhow::Result<Self> {
        let bridge = format!("sparbr{id}");
        let _ = sh(&["ip", "link", "del", &bridge]);
        sh(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        sh(&["ip", "addr", "add", &format!("10.123.{id}.1/24"), "dev", &bridge])?;
        sh(&["ip", "link", "set", &bridge, "up"])?;
        Ok(Self { id, bridge, pods: Vec::new(), next: 2 })
    }

    /// The root namespace's address on the bridge (where Spar listens).
    pub fn host_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 123, self.id, 1))
    }

    /// A pod namespace with its own IP; returns (namespace name, IP).
    pub fn add_pod(&mut self) -> anyhow::Result<(String, IpAddr)> {
        let n = self.next;
        self.next += 1;
        let ns = format!("sparns{}-{n}", self.id);
        let (vh, vp) = (format!("sparv{}h{n}", self.id), format!("sparv{}p{n}", self.id));
        let _ = sh(&["ip", "netns", "del", &ns]);
        sh(&["ip", "netns", "add", &ns])?;
        self.pods.push(ns.clone());
        sh(&["ip", "link", "add", &vh, "type", "veth", "peer", "name", &vp])?;
        sh(&["ip", "link", "set", &vp, "netns", &ns])?;
        sh(&["ip", "link", "set", &vh, "master", &self.bridge])?;
        sh(&["ip", "link", "set", &vh, "up"])?;
        let ip = Ipv4Addr::new(10, 123, self.id, n);
        sh(&["ip", "netns", "exec", &ns, "ip", "addr", "add", &format!("{ip}/24"), "dev", &vp])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", &vp, "up"])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        sh(&["ip", "netns", "exec", &ns, "ip", "route", "add", "default", "via", &self.host_ip().to_string()])?;
        Ok((ns, IpAddr::V4(ip)))
    }

    /// Runs a command inside `ns` (optionally as `uid`), output to `log`.
    pub fn spawn(
        ns: &str,
        uid: Option<u32>,
        program: &std::path::Path,
        args: &[String],
        log: std::fs::File,
    ) -> anyhow::Result<Child> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]);
        if let Some(u) = uid {
            cmd.args(["setpriv", &format!("--reuid={u}"), &format!("--regid={u}"), "--clear-groups", "--"]);
        }
        cmd.arg(program).args(args).stdout(Stdio::null()).stderr(log).kill_on_drop(true);
        cmd.spawn().with_context(|| format!("starting {} in {ns}", program.display()))
    }

    /// Runs a command inside `ns` to completion and returns its standard output.
    pub async fn run(ns: &str, program: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ip").args(["netns", "exec", ns]).arg(program).args(args).output().await?;
        if !out.status.success() {
            bail!("{} {} in {ns}: {}", program.display(), args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in &self.pods {
            let _ = sh(&["ip", "netns", "del", ns]);
        }
        let _ = sh(&["ip", "link", "del", &self.bridge]);
    }
}
