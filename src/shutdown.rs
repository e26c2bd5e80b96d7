//! How far the service is in stopping, as every task sees it (a `watch` channel of it).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    Running,
    /// Refuse new calls; let calls in progress finish.
    Draining,
    /// Hang up every call now.
    HangupNow,
    /// Stop the transports.
    Stop,
}
