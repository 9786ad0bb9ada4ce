//! Watching and signalling shims that may not be skiffd's children.
//!
//! A shim started by this skiffd is its child; one found again after a restart is not (it was
//! reparented to init). Both are handled the same way, through a pidfd: it becomes readable when
//! the process exits, whoever reaps it, and a signal sent through it can never reach another
//! process that reused the pid. The pid's start time, kept in the task record, tells at recovery
//! whether the pid still names the shim that was started.

use std::os::fd::OwnedFd;

use rustix::process::{Pid, PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use tokio::io::unix::AsyncFd;

/// A process watched through a pidfd.
#[derive(Debug)]
pub struct Watched {
    fd: AsyncFd<OwnedFd>,
}

impl Watched {
    /// Opens process `pid`, if it still exists and started at `start_time` (clock ticks after
    /// boot, as [`start_time`] reads it): a pid reused since is not the process meant.
    pub fn open(pid: i32, start_time: u64) -> Option<Self> {
        let fd = pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty()).ok()?;
        // Checked after opening: the pidfd pins this process, so the pid cannot be reused
        // between the check and the watch.
        if self::start_time(pid) != Some(start_time) {
            return None;
        }
        Some(Self {
            fd: crate::sys::async_fd(fd).ok()?,
        })
    }

    /// Resolves when the process has exited.
    pub async fn exited(&self) {
        // A pidfd never becomes unreadable again once its process has exited; an error (which
        // a pidfd does not produce) is treated as an exit too rather than a hang.
        let _ = self.fd.readable().await;
    }

    /// Sends `signal`; false if the process is gone.
    pub fn signal(&self, signal: Signal) -> bool {
        pidfd_send_signal(self.fd.get_ref(), signal).is_ok()
    }
}

/// The start time of `pid` (clock ticks since boot), from `/proc/<pid>/stat`.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watches_a_process_that_is_not_waited_for() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let t = start_time(pid).unwrap();
        assert!(Watched::open(pid, t + 1).is_none(), "wrong start time");
        let w = Watched::open(pid, t).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), w.exited())
            .await
            .unwrap();
        child.wait().unwrap();
        assert!(!w.signal(Signal::TERM));
    }

    #[test]
    fn start_time_of_self() {
        assert!(start_time(std::process::id() as i32).is_some());
        assert!(start_time(i32::MAX).is_none());
    }
}
