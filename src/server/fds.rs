//! Open file descriptors: fitting the configuration in the process's limit, and saying
//! plainly when it runs out.

/// Descriptors kept for everything but calls and HTTP connections: the database pool, SMSC
/// and softswitch links, the SIP socket, logs, the runtime's own.
const RESERVED_FDS: u64 = 256;

/// Raises the open-files soft limit to the hard one and makes the configuration fit in it:
/// each call holds an RTP socket, each HTTP connection a socket. When both cannot have their
/// configured maximum, HTTP connections give way first (down to 64), then calls; each
/// change is said in a warning. Returns the warnings.
pub fn fit_descriptors(cfg: &mut crate::config::Config) -> Vec<String> {
    let mut warnings = vec![];
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit fill or read the struct we pass and change only this
    // process's limit.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return warnings;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    };
    let (calls, http) = fit(
        soft,
        cfg.sip.max_calls as u64,
        cfg.http.max_connections as u64,
    );
    if http < cfg.http.max_connections as u64 {
        warnings.push(format!(
            "open files limit {soft}: http.max_connections lowered from {} to {http} so calls keep their descriptors",
            cfg.http.max_connections
        ));
        cfg.http.max_connections = http as usize;
    }
    if calls < cfg.sip.max_calls as u64 {
        warnings.push(format!(
            "open files limit {soft}: calls.max lowered from {} to {calls} (raise the limit, e.g. LimitNOFILE= in systemd)",
            cfg.sip.max_calls
        ));
        cfg.sip.max_calls = calls as usize;
    }
    warnings
}

/// (calls, HTTP connections) that fit in `soft` descriptors with [`RESERVED_FDS`] kept.
fn fit(soft: u64, calls: u64, http: u64) -> (u64, u64) {
    let room = soft.saturating_sub(RESERVED_FDS);
    if calls + http <= room {
        return (calls, http);
    }
    let http = room.saturating_sub(calls).max(64.min(http));
    let calls = calls.min(room.saturating_sub(http)).max(1);
    (calls, http)
}

/// Logs a failed `accept` on a listener, saying so plainly when the process is out of file
/// descriptors (once a second at most: the listener retries at once).
pub fn log_accept_error(what: &str, e: &std::io::Error) {
    use std::sync::atomic::AtomicU64;
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = crate::clock::now_ms() as u64;
    if now.saturating_sub(LAST.swap(now, std::sync::atomic::Ordering::Relaxed)) < 1000 {
        return;
    }
    if is_out_of_descriptors(e) {
        tracing::error!(
            "out of file descriptors: {what} connections cannot be accepted (raise the open files limit, or lower calls.max / http.max_connections)"
        );
    } else {
        tracing::warn!(error = %e, "{what} accept failed");
    }
}

/// EMFILE / ENFILE: the process or the system has no file descriptor left.
pub fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

#[cfg(test)]
mod fd_tests {
    use super::fit;

    #[test]
    fn calls_keep_their_descriptors_and_http_gives_way_first() {
        // Plenty: nothing changes.
        assert_eq!(fit(65536, 2000, 1024), (2000, 1024));
        // 1024 descriptors (a common default): 768 left; HTTP gives way to calls.
        assert_eq!(fit(1024, 500, 1024), (500, 268));
        // Calls alone would not fit: HTTP keeps 64, calls get the rest.
        assert_eq!(fit(1024, 2000, 1024), (704, 64));
    }
}
