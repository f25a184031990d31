//! `spar iptables`: traffic capture for a sidecar, the rules Istio's `istio-iptables`
//! installs (REDIRECT mode), run inside the pod's network namespace (an init container in
//! Kubernetes, `ip netns exec` in tests).
//!
//! Outbound TCP from the application goes to 15001 (`virtualOutbound`), inbound TCP to
//! 15006 (`virtualInbound`); the proxy's own traffic (its uid) and excluded ports are left
//! alone, so nothing loops.

use std::process::Command;

use anyhow::{Context, bail};

/// What to capture.
#[derive(Clone, Debug)]
pub struct Capture {
    /// uid the proxy runs as (Istio: 1337).
    pub proxy_uid: u32,
    /// gid the proxy runs as.
    pub proxy_gid: u32,
    /// Where outbound connections go.
    pub outbound_port: u16,
    /// Where inbound connections go.
    pub inbound_port: u16,
    /// Inbound ports left alone (admin, health, metrics).
    pub exclude_inbound_ports: Vec<u16>,
}

/// The `iptables -t nat` argument lists, in order.
pub fn rules(c: &Capture) -> Vec<Vec<String>> {
    let mut r: Vec<Vec<String>> = Vec::new();
    let mut add = |args: &str| r.push(args.split_whitespace().map(str::to_string).collect());
    for chain in ["ISTIO_INBOUND", "ISTIO_IN_REDIRECT", "ISTIO_OUTPUT", "ISTIO_REDIRECT"] {
        add(&format!("-N {chain}"));
    }
    add(&format!("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports {}", c.outbound_port));
    add(&format!("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}", c.inbound_port));
    add("-A PREROUTING -p tcp -j ISTIO_INBOUND");
    for p in &c.exclude_inbound_ports {
        add(&format!("-A ISTIO_INBOUND -p tcp --dport {p} -j RETURN"));
    }
    add("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT");
    add("-A OUTPUT -p tcp -j ISTIO_OUTPUT");
    add("-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN");
    // The proxy talking to its own workload through lo goes through inbound capture.
    add(&format!("-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner {} -j ISTIO_IN_REDIRECT", c.proxy_uid));
    add(&format!("-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner {} -j RETURN", c.proxy_uid));
    add(&format!("-A ISTIO_OUTPUT -m owner --uid-owner {} -j RETURN", c.proxy_uid));
    add(&format!("-A ISTIO_OUTPUT -m owner --gid-owner {} -j RETURN", c.proxy_gid));
    add("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN");
    add("-A ISTIO_OUTPUT -j ISTIO_REDIRECT");
    r
}

/// Applies (or, with `dry_run`, prints) the rules.
pub fn run(c: &Capture, dry_run: bool) -> anyhow::Result<()> {
    for args in rules(c) {
        if dry_run {
            println!("iptables -t nat {}", args.join(" "));
            continue;
        }
        let out = Command::new("iptables")
            .arg("-t")
            .arg("nat")
            .args(&args)
            .output()
            .context("running iptables (is it installed?)")?;
        if !out.status.success() {
            bail!("iptables -t nat {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_traffic_is_exempt_and_the_rest_redirected() {
        let c = Capture {
            proxy_uid: 1337,
            proxy_gid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            exclude_inbound_ports: vec![15000, 15021],
        };
        let text: Vec<String> = rules(&c).iter().map(|r| r.join(" ")).collect();
        let pos = |needle: &str| {
            text.iter().position(|l| l == needle).unwrap_or_else(|| panic!("missing {needle}: {text:#?}"))
        };
        assert!(pos("-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN") < pos("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"));
        assert!(
            pos("-A ISTIO_INBOUND -p tcp --dport 15000 -j RETURN")
                < pos("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT")
        );
        pos("-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001");
        pos("-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006");
    }
}
