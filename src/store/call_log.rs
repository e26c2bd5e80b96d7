//! The call log: every ended call's record (CDR) and where it went in its plan (node
//! statistics) reach the database through one writer task, in batches.
//!
//! Calls end in bursts (a storm of hang-ups, the end of a load test, a softswitch restart).
//! Written one by one, with a commit per node of the plan, a burst of 20 calls a second made ten
//! commits a call, and on a loaded machine calls waited more than the pool's three seconds
//! for a connection: their records were lost. The writer takes whatever has queued and writes it
//! in one transaction, so a burst costs a few commits however large it is.
//!
//! A call waits for its record's first attempt (a call's end is known to be written when its
//! admission permit is released). When the database is out, the records stay queued in memory
//! and are written once it is back; the call does not wait for that. Only a record the database
//! refuses outright (never expected) is dropped, after it was tried alone.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::{Backend, Cdr, Db, StoreError};

/// One ended call: its record, and the nodes of its plan it passed through in order (empty
/// when it ended before its plan started).
#[derive(Clone, Debug)]
pub struct CallEnd {
    pub cdr: Cdr,
    pub path: Vec<String>,
}

/// What became of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logged {
    /// In the database.
    Written,
    /// The database is unavailable: the record is queued and written when it is back.
    Queued,
    /// The database refused the record (it was tried alone); it is lost, and logged.
    Refused,
}

/// The most records one transaction carries.
const BATCH: usize = 512;
/// Records held while the database is out; beyond this the oldest are dropped (and logged).
const MAX_QUEUED: usize = 100_000;
/// Retries while the database is out: from the first delay, doubling to the last.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long the writer keeps trying to write what is queued once the service stops.
const FLUSH_AT_STOP: Duration = Duration::from_secs(5);

type Entry = (CallEnd, Option<oneshot::Sender<Logged>>);

/// The handle calls write through (cheap to clone).
#[derive(Clone)]
pub struct CallLog {
    tx: mpsc::UnboundedSender<Entry>,
}

/// The writer task, ended by [`CallLogWriter::finish`].
pub struct CallLogWriter {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl CallLog {
    /// Starts the writer on `db`.
    pub fn spawn(db: Db) -> (CallLog, CallLogWriter) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(db, rx, stop_rx));
        (
            CallLog { tx },
            CallLogWriter {
                stop: stop_tx,
                task,
            },
        )
    }

    /// Logs one ended call; resolves once the record is written or queued.
    pub async fn write(&self, end: CallEnd) -> Logged {
        let (ack, done) = oneshot::channel();
        let call_id = end.cdr.call_id.clone();
        if self.tx.send((end, Some(ack))).is_err() {
            warn!(call_id, "CDR not written: the call log has stopped");
            return Logged::Refused;
        }
        done.await.unwrap_or(Logged::Refused)
    }

    /// Logs one ended call without waiting.
    pub fn send(&self, end: CallEnd) {
        let call_id = end.cdr.call_id.clone();
        if self.tx.send((end, None)).is_err() {
            warn!(call_id, "CDR not written: the call log has stopped");
        }
    }
}

impl CallLogWriter {
    /// Writes what is queued (trying for a few seconds if the database is out) and stops.
    /// Records logged after this are refused.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn run(db: Db, mut rx: mpsc::UnboundedReceiver<Entry>, mut stop: oneshot::Receiver<()>) {
    let mut queued: VecDeque<Entry> = VecDeque::new();
    let mut retry = RETRY_FIRST;
    let mut out_since: Option<tokio::time::Instant> = None;
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        if queued.is_empty() {
            if stopping.is_some() {
                break;
            }
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => queued.push_back(e),
                    None => break,
                },
                _ = &mut stop => {
                    stopping = Some(tokio::time::Instant::now() + FLUSH_AT_STOP);
                    rx.close();
                }
            }
        }
        while let Ok(e) = rx.try_recv() {
            queued.push_back(e);
        }
        while queued.len() > MAX_QUEUED {
            if let Some((end, ack)) = queued.pop_front() {
                warn!(
                    call_id = end.cdr.call_id,
                    "CDR not written: too many queued while the database is out"
                );
                if let Some(ack) = ack {
                    let _ = ack.send(Logged::Refused);
                }
            }
        }
        let n = queued.len().min(BATCH);
        let batch: Vec<&CallEnd> = queued.iter().take(n).map(|(e, _)| e).collect();
        match db.write_call_ends(&batch).await {
            Ok(()) => {
                for (_, ack) in queued.drain(..n) {
                    if let Some(ack) = ack {
                        let _ = ack.send(Logged::Written);
                    }
                }
                if let Some(since) = out_since.take() {
                    info!(
                        after_ms = since.elapsed().as_millis() as u64,
                        "call records are written again"
                    );
                }
                retry = RETRY_FIRST;
            }
            Err(e) if is_transient(&e, db.backend()) => {
                if out_since.is_none() {
                    warn!(error = %e, "call records cannot be written now: queued until the database is back");
                    out_since = Some(tokio::time::Instant::now());
                }
                // Their calls are over: they need not wait for the database.
                for (_, ack) in queued.iter_mut() {
                    if let Some(ack) = ack.take() {
                        let _ = ack.send(Logged::Queued);
                    }
                }
                if stopping.is_some_and(|deadline| tokio::time::Instant::now() >= deadline) {
                    warn!(
                        lost = queued.len(),
                        "stopping with call records the database did not take"
                    );
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = &mut stop, if stopping.is_none() => {
                        stopping = Some(tokio::time::Instant::now() + FLUSH_AT_STOP);
                        rx.close();
                    }
                }
                retry = (retry * 2).min(RETRY_MAX);
            }
            Err(e) => {
                // Something in the batch is refused: each record alone, so one bad record
                // costs no other.
                warn!(error = %e, "a batch of call records was refused: writing them one by one");
                for (end, ack) in queued.drain(..n) {
                    let logged = match db.write_call_ends(&[&end]).await {
                        Ok(()) => Logged::Written,
                        Err(e) => {
                            warn!(call_id = end.cdr.call_id, error = %e, "CDR not written");
                            Logged::Refused
                        }
                    };
                    if let Some(ack) = ack {
                        let _ = ack.send(logged);
                    }
                }
            }
        }
    }
}

/// The database is out or busy (try again later), as opposed to refusing what was written.
fn is_transient(e: &StoreError, backend: Backend) -> bool {
    let StoreError::Db(e) = e else { return false };
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => {
            let code = d.code().unwrap_or_default();
            match backend {
                // Busy, locked, I/O error, disk full, cannot open (the primary code is the low
                // byte of an extended one).
                Backend::Sqlite => code
                    .parse::<i32>()
                    .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 13 | 14)),
                // Class 08 (connection), 53 (insufficient resources), 57P (shutting down),
                // serialization failure and deadlock.
                Backend::Postgres => {
                    code.starts_with("08")
                        || code.starts_with("53")
                        || code.starts_with("57P")
                        || code == "40001"
                        || code == "40P01"
                }
            }
        }
        _ => false,
    }
}

/// Per (service, node): how many of the calls reached it, and how many ended there. A call that
/// passes a node twice counts once.
pub fn node_counts<'a>(
    ends: impl IntoIterator<Item = &'a CallEnd>,
) -> BTreeMap<(String, String), (i64, i64)> {
    let mut counts: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for end in ends {
        let (Some(service), Some(last)) = (&end.cdr.service, end.path.last()) else {
            continue;
        };
        let mut seen = std::collections::BTreeSet::new();
        for node in &end.path {
            if !seen.insert(node.as_str()) {
                continue;
            }
            let c = counts.entry((service.clone(), node.clone())).or_default();
            c.0 += 1;
            c.1 += i64::from(node == last);
        }
    }
    counts
}

impl Db {
    /// Writes ended calls (records and node statistics) in one transaction.
    pub async fn write_call_ends(&self, ends: &[&CallEnd]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        for ((service, node), (reached, ended)) in node_counts(ends.iter().copied()) {
            sqlx::query(
                "INSERT INTO node_stats (service, node, reached, ended) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (service, node) DO UPDATE SET reached = node_stats.reached + $3,
                    ended = node_stats.ended + $4",
            )
            .bind(service)
            .bind(node)
            .bind(reached)
            .bind(ended)
            .execute(&mut *tx)
            .await?;
        }
        for end in ends {
            super::insert_cdr_query(&end.cdr).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(call_id: &str, service: Option<&str>, path: &[&str]) -> CallEnd {
        CallEnd {
            cdr: Cdr {
                call_id: call_id.into(),
                caller: "+12015550100".into(),
                dialled: "echo".into(),
                service: service.map(String::from),
                codec: Some("PCMU".into()),
                dtmf_methods: String::new(),
                started_at: "2026-01-01T00:00:00Z".into(),
                answered_at: None,
                ended_at: "2026-01-01T00:00:01Z".into(),
                end_reason: "caller-hangup".into(),
                digits: None,
            },
            path: path.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn node_counts_count_each_call_once_per_node_and_where_it_ended() {
        let ends = [
            end(
                "a",
                Some("echo"),
                &["start", "menu", "start", "menu", "bye"],
            ),
            end("b", Some("echo"), &["start", "menu"]),
            end("c", None, &["start"]),
            end("d", Some("echo"), &[]),
        ];
        let c = node_counts(&ends);
        let get = |n: &str| c[&("echo".to_string(), n.to_string())];
        assert_eq!(get("start"), (2, 0));
        assert_eq!(get("menu"), (2, 1));
        assert_eq!(get("bye"), (1, 1));
        assert_eq!(c.len(), 3);
    }

    #[tokio::test]
    async fn a_burst_of_ends_is_written_whole_records_and_statistics() {
        for (db, _guard) in super::super::testing::backends().await {
            let (log, writer) = CallLog::spawn(db.clone());
            let mut waits = vec![];
            for i in 0..300 {
                let log = log.clone();
                waits.push(tokio::spawn(async move {
                    log.write(end(&format!("c{i}"), Some("echo"), &["start", "menu"]))
                        .await
                }));
            }
            for w in waits {
                assert_eq!(w.await.unwrap(), Logged::Written);
            }
            assert_eq!(db.recent_cdrs(1000).await.unwrap().len(), 300);
            let row = sqlx::query_as::<_, (i64, i64)>(
                "SELECT reached, ended FROM node_stats WHERE service = 'echo' AND node = 'menu'",
            )
            .fetch_one(db.pool())
            .await
            .unwrap();
            assert_eq!(row, (300, 300), "{:?}", db.backend());
            writer.finish().await;
            assert_eq!(
                log.write(end("late", None, &[])).await,
                Logged::Refused,
                "after finish"
            );
        }
    }

    #[tokio::test]
    async fn records_wait_out_a_database_that_is_away_and_are_written_after() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        // Another connection holds SQLite's write lock: the writer cannot write, as when the
        // database is out, until it lets go.
        let mut blocker = db.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO node_stats (service, node, reached, ended) VALUES ('x', 'y', 0, 0)",
        )
        .execute(&mut *blocker)
        .await
        .unwrap();
        let (log, writer) = CallLog::spawn(db.clone());
        let logged = log.write(end("held", Some("echo"), &["start"])).await;
        assert_eq!(logged, Logged::Queued);
        assert!(db.recent_cdrs(10).await.unwrap().is_empty());
        blocker.rollback().await.unwrap();
        writer.finish().await;
        let cdrs = db.recent_cdrs(10).await.unwrap();
        assert_eq!(cdrs.len(), 1);
        assert_eq!(cdrs[0].call_id, "held");
    }

    #[tokio::test]
    async fn a_record_the_database_refuses_costs_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path()).await.unwrap();
        let (log, writer) = CallLog::spawn(db.clone());
        let bad = end("bad", Some("echo"), &["start"]);
        sqlx::query("CREATE TRIGGER no_bad BEFORE INSERT ON calls WHEN NEW.call_id = 'bad' BEGIN SELECT RAISE(ABORT, 'refused'); END")
            .execute(db.pool())
            .await
            .unwrap();
        log.send(end("good-1", Some("echo"), &["start"]));
        log.send(bad);
        log.send(end("good-2", Some("echo"), &["start"]));
        writer.finish().await;
        let ids: Vec<String> = db
            .recent_cdrs(10)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.call_id)
            .collect();
        assert_eq!(ids, ["good-2", "good-1"]);
    }
}
