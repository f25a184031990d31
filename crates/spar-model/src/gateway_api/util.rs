//! Small pieces istiod's conversion leans on: Go durations, protobuf JSON durations, and
//! `host.Name`'s subset and intersection.

/// Reads a Go (and Gateway API) duration, `1h30m`, `10s`, `1.5s`, `250ms`, into
/// nanoseconds; `None` when it is not one.
pub(super) fn go_duration(s: &str) -> Option<u128> {
    if s == "0" {
        return Some(0);
    }
    let mut rest = s;
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (num, tail) = rest.split_at(end);
        let value: f64 = num.parse().ok()?;
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "h" => 3_600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "µs" => 1e3,
            "ns" => 1.0,
            _ => return None,
        };
        total += value * scale;
        rest = tail;
    }
    Some(total.round() as u128)
}

/// A duration as protobuf's JSON writes it (`1s`, `0.001s`, `1.500s`): what istiod's
/// `durationpb` values look like in a VirtualService.
pub(super) fn proto_duration(nanos: u128) -> String {
    let secs = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    if frac == 0 {
        format!("{secs}s")
    } else if frac.is_multiple_of(1_000_000) {
        format!("{secs}.{:03}s", frac / 1_000_000)
    } else if frac.is_multiple_of(1_000) {
        format!("{secs}.{:06}s", frac / 1_000)
    } else {
        format!("{secs}.{frac:09}s")
    }
}

/// Istio's `host.Name.SubsetOf`: every name `n` matches is matched by `o`.
pub(super) fn subset_of(n: &str, o: &str) -> bool {
    if o == "*" {
        return true;
    }
    if let Some(o_suffix) = o.strip_prefix('*') {
        return match n.strip_prefix('*') {
            Some(n_suffix) => n_suffix.ends_with(o_suffix),
            None => n.ends_with(o_suffix),
        };
    }
    !n.starts_with('*') && n == o
}

/// Istio's `host.Names.Intersection`: for each pair, the narrower name when one covers
/// the other, without repeats, in `a`'s order.
pub(super) fn intersection(a: &[String], b: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for x in a {
        for y in b {
            let pick = if subset_of(x, y) {
                x
            } else if subset_of(y, x) {
                y
            } else {
                continue;
            };
            if !out.contains(pick) {
                out.push(pick.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_read_as_go_reads_them() {
        assert_eq!(go_duration("1s"), Some(1_000_000_000));
        assert_eq!(go_duration("1ms"), Some(1_000_000));
        assert_eq!(go_duration("1h30m"), Some(5_400_000_000_000));
        assert_eq!(go_duration("1.5s"), Some(1_500_000_000));
        assert_eq!(go_duration("0"), Some(0));
        assert_eq!(go_duration("5"), None);
        assert_eq!(go_duration("1d"), None);
        assert_eq!(go_duration(""), None);
    }

    #[test]
    fn durations_are_written_as_protobuf_json_writes_them() {
        assert_eq!(proto_duration(1_000_000_000), "1s");
        assert_eq!(proto_duration(1_000_000), "0.001s");
        assert_eq!(proto_duration(1_500_000_000), "1.500s");
        assert_eq!(proto_duration(1_000), "0.000001s");
        assert_eq!(proto_duration(1), "0.000000001s");
    }

    #[test]
    fn a_wildcard_covers_its_subdomains_and_narrower_wildcards() {
        assert!(subset_of("a.example.com", "*.example.com"));
        assert!(subset_of("*.a.example.com", "*.example.com"));
        assert!(!subset_of("*.example.com", "a.example.com"));
        assert!(subset_of("anything", "*"));
        assert_eq!(intersection(&["*".into()], &["*.example.com".into()]), vec!["*.example.com".to_string()]);
        assert!(intersection(&["a.com".into()], &["b.com".into()]).is_empty());
    }
}
