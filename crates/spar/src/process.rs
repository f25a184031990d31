//! What `spar serve` sets on its own process before it starts serving.

/// Turns transparent huge pages off for this process. The allocator asks for them on its
/// arenas (and hosts with THP `always` give them anyway); a 2 MiB page is resident and
/// zeroed as a whole once any byte of it is touched, so the many half-used pages of
/// thousands of streams inflated RSS by a fifth (1k services × 2k Sidecar-scoped proxies:
/// 185 MB with them, 148 MB without; docs/performance.md) and their zeroing showed in
/// push profiles.
#[cfg(target_os = "linux")]
pub fn no_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and only sets a flag on this
    // process' memory map; it touches no memory of ours.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot turn transparent huge pages off");
    }
}

/// Raises the soft limit on open files to the hard limit, as Go programs (istiod among
/// them) do at startup: every proxy holds a connection, and a soft limit of 1,024 let a
/// few hundred idle connections lock every proxy out. Logged when it moves.
#[cfg(target_os = "linux")]
pub fn raise_open_file_limit() {
    match raised_open_file_limit() {
        Ok(Some((from, to))) => tracing::info!(from, to, "open-file limit raised to the hard limit"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// The soft open-file limit set to the hard one: `(before, after)` when it moved.
#[cfg(target_os = "linux")]
fn raised_open_file_limit() -> std::io::Result<Option<(u64, u64)>> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one `rlimit` we own.
    #[allow(unsafe_code)]
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur >= lim.rlim_max {
        return Ok(None);
    }
    let before = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: setrlimit reads one `rlimit` we own.
    #[allow(unsafe_code)]
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((before, lim.rlim_max)))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn limits() -> libc::rlimit {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as above.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) };
        assert_eq!(rc, 0);
        lim
    }

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let hard = limits().rlim_max;
        let low = libc::rlimit { rlim_cur: 256.min(hard), rlim_max: hard };
        // SAFETY: as above.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const low) };
        assert_eq!(rc, 0, "lowering the soft limit for the test");
        let moved = raised_open_file_limit().expect("raised");
        assert_eq!(limits().rlim_cur, hard);
        if hard > 256 {
            assert_eq!(moved, Some((256, hard)));
        }
        assert_eq!(raised_open_file_limit().expect("nothing to do"), None, "already at the hard limit");
    }
}
