//! What the agent keeps across restarts and cuts (`<root>/agent.json`): the state changes not
//! yet acknowledged by apid, in order, with their sequence numbers; the last report of each
//! task; and the desired state's version.
//!
//! This is what makes offline operation lossless: while apid is unreachable every change of
//! every task is still recorded here (written durably before anything else happens), and on
//! reconnect it is sent in order; apid applies only what is above its acknowledged number, so
//! a resend after a cut, or after skiffd was killed between sending and hearing the answer,
//! applies nothing twice. A change that happened while skiffd itself was down is found at start
//! by comparing each task's record with its last report.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::TaskEvent;
use crate::record::write_atomic;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// It could not be read or written.
    #[error("{op} {path}")]
    Io {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not a journal.
    #[error("{path}: not the agent's journal: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        why: String,
    },
}

/// The agent's durable state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Journal {
    /// The desired-state version the node holds.
    pub version: i64,
    /// The last sequence number given to an event.
    pub last_seq: i64,
    /// Events apid has not acknowledged, oldest first.
    pub outbox: Vec<TaskEvent>,
    /// The last event recorded for each task.
    pub reported: BTreeMap<String, TaskEvent>,
}

/// Whether two reports say the same (their sequence numbers and times aside).
fn same(a: &TaskEvent, b: &TaskEvent) -> bool {
    let strip = |e: &TaskEvent| TaskEvent {
        seq: 0,
        at: 0.0,
        ..e.clone()
    };
    strip(a) == strip(b)
}

impl Journal {
    /// Reads `path`; a missing file is an empty journal (a node that never synced).
    pub fn load(path: &Path) -> Result<Self, JournalError> {
        match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data).map_err(|e| JournalError::Corrupt {
                path: path.to_owned(),
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(JournalError::Io {
                op: "reading",
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Writes it to `path` durably.
    pub fn save(&self, path: &Path) -> Result<(), JournalError> {
        let data = serde_json::to_vec(self).expect("journals serialize");
        write_atomic(path, &data, 0o600).map_err(|source| JournalError::Io {
            op: "writing",
            path: path.to_owned(),
            source,
        })
    }

    /// Records `ev` when it differs from the task's last report: it gets the next sequence
    /// number and joins the outbox. True when recorded.
    pub fn record(&mut self, mut ev: TaskEvent) -> bool {
        if self
            .reported
            .get(&ev.task_id)
            .is_some_and(|last| same(last, &ev))
        {
            return false;
        }
        self.last_seq += 1;
        ev.seq = self.last_seq;
        self.reported.insert(ev.task_id.clone(), ev.clone());
        self.outbox.push(ev);
        true
    }

    /// Forgets the events apid acknowledged.
    pub fn acknowledged(&mut self, acked_seq: i64) {
        self.outbox.retain(|e| e.seq > acked_seq);
    }

    /// Forgets the reports of tasks outside `keep` whose last report was acknowledged: apid
    /// no longer lists them and the node no longer holds them.
    pub fn prune(&mut self, keep: &BTreeSet<&str>) {
        let pending: BTreeSet<String> = self.outbox.iter().map(|e| e.task_id.clone()).collect();
        self.reported
            .retain(|id, _| keep.contains(id.as_str()) || pending.contains(id));
    }

    /// The last status reported of `task`, if any.
    pub fn last_status(&self, task: &str) -> Option<&str> {
        self.reported.get(task).map(|e| e.last_status.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(task: &str, status: &str, at: f64) -> TaskEvent {
        TaskEvent {
            task_id: task.into(),
            last_status: status.into(),
            at,
            ..TaskEvent::default()
        }
    }

    #[test]
    fn changes_get_increasing_numbers_and_repeats_are_dropped() {
        let mut j = Journal::default();
        assert!(j.record(ev("a", "PENDING", 1.0)));
        assert!(!j.record(ev("a", "PENDING", 2.0)), "same report, later");
        assert!(j.record(ev("b", "PENDING", 2.0)));
        assert!(j.record(ev("a", "RUNNING", 3.0)));
        let seqs: Vec<i64> = j.outbox.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        j.acknowledged(2);
        assert_eq!(j.outbox.len(), 1);
        assert_eq!(j.outbox[0].last_status, "RUNNING");
        assert_eq!(j.last_status("a"), Some("RUNNING"));
    }

    #[test]
    fn it_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        assert_eq!(Journal::load(&path).unwrap(), Journal::default());
        let mut j = Journal {
            version: 7,
            ..Journal::default()
        };
        j.record(ev("a", "STOPPED", 1.0));
        j.save(&path).unwrap();
        let back = Journal::load(&path).unwrap();
        assert_eq!(back, j);
        std::fs::write(&path, "{").unwrap();
        let e = Journal::load(&path).unwrap_err().to_string();
        assert!(e.contains("agent.json"), "{e}");
    }

    #[test]
    fn pruning_keeps_what_is_held_or_unacknowledged() {
        let mut j = Journal::default();
        j.record(ev("gone", "STOPPED", 1.0));
        j.record(ev("held", "RUNNING", 1.0));
        j.record(ev("unsent", "STOPPED", 1.0));
        j.acknowledged(2);
        j.prune(&BTreeSet::from(["held"]));
        let left: Vec<&str> = j.reported.keys().map(String::as_str).collect();
        assert_eq!(left, ["held", "unsent"]);
    }
}
