//! The terminal side of `skiff exec -t`: the console socket through which libcontainer hands
//! over the pty master it allocates inside the container, and the caller's own terminal (raw
//! mode, window size) that the shim relays to it.
//!
//! The pty is allocated by the exec'd process itself, from the container's devpts after it has
//! joined the container's mount namespace (libcontainer's `tty::setup_console`, runc's console
//! socket protocol): a pty from the host's devpts would be a host device inside the container.
//! Only the master travels back, as an `SCM_RIGHTS` message on a unix socket the shim listens
//! on, bound in a private (0700) temporary directory so that no one else can connect first.
//!
//! Everything here goes through rustix's safe API: nix 0.29 hands received descriptors back as
//! raw integers and has no safe `TIOCGWINSZ`/`TIOCSWINSZ`, and this crate forbids `unsafe`.

use std::fs::File;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, recvmsg};
use rustix::termios::{
    OptionalActions, Termios, isatty, tcgetattr, tcgetwinsize, tcsetattr, tcsetwinsize,
};

/// Errors of the console socket and terminal handling.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// The console socket failed.
    #[error("{op} console socket {path}")]
    Socket {
        /// What was being done.
        op: &'static str,
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection carried no file descriptor.
    #[error("no pty master received on console socket {0}")]
    NoMaster(PathBuf),
    /// A terminal operation failed.
    #[error("{op}")]
    Terminal {
        /// What was being done.
        op: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A listening console socket (libcontainer's `--console-socket`).
#[derive(Debug)]
pub(crate) struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Listens on `path`, which must be in a directory only this process can write to.
    pub(crate) fn bind(path: &Path) -> Result<Self, ConsoleError> {
        let listener = UnixListener::bind(path).map_err(|source| ConsoleError::Socket {
            op: "bind",
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Where it listens.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the pty master sent on the first connection. libcontainer connects while building
    /// the tenant and its init sends the master before the exec'd program starts, so after a
    /// successful build this does not block.
    pub(crate) fn receive(self) -> Result<OwnedFd, ConsoleError> {
        let err = |op| {
            let path = self.path.clone();
            move |source| ConsoleError::Socket { op, path, source }
        };
        let (conn, _) = self.listener.accept().map_err(err("accept on"))?;
        // libcontainer sends the name "/dev/ptmx" with the descriptor.
        let mut name = [0u8; 64];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        recvmsg(
            &conn,
            &mut [IoSliceMut::new(&mut name)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(|e| err("receive on")(e.into()))?;
        control
            .drain()
            .find_map(|msg| match msg {
                RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
                _ => None,
            })
            .ok_or_else(|| ConsoleError::NoMaster(self.path.clone()))
    }
}

fn terminal(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> ConsoleError {
    move |e| ConsoleError::Terminal {
        op,
        source: e.into(),
    }
}

/// A terminal put in raw mode, restored to its previous settings when dropped, on every path
/// out of the shim, so that an error does not leave the user's shell without echo.
#[derive(Debug)]
pub(crate) struct RawMode<'fd> {
    fd: BorrowedFd<'fd>,
    saved: Termios,
}

impl<'fd> RawMode<'fd> {
    /// Puts `fd` in raw mode if it is a terminal (keystrokes, ^C included, go to the container's
    /// terminal, which does the echoing and line editing); `None` if it is not one.
    pub(crate) fn enter(fd: BorrowedFd<'fd>) -> Result<Option<Self>, ConsoleError> {
        if !isatty(fd) {
            return Ok(None);
        }
        let saved = tcgetattr(fd).map_err(terminal("get terminal attributes"))?;
        let mut raw = saved.clone();
        raw.make_raw();
        // Now, not Flush: what was typed ahead is for the container.
        tcsetattr(fd, OptionalActions::Now, &raw).map_err(terminal("set raw mode"))?;
        Ok(Some(Self { fd, saved }))
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        if let Err(e) = tcsetattr(self.fd, OptionalActions::Now, &self.saved) {
            eprintln!("skiff-shim: restore terminal: {e}");
        }
    }
}

/// Gives `to` (the pty master) the window size of `from` if `from` is a terminal; the kernel
/// sends SIGWINCH to the container's foreground process group when it changes.
pub(crate) fn copy_size(from: impl AsFd, to: impl AsFd) -> Result<(), ConsoleError> {
    if !isatty(&from) {
        return Ok(());
    }
    let size = tcgetwinsize(from).map_err(terminal("get window size"))?;
    tcsetwinsize(to, size).map_err(terminal("set window size"))
}

/// This process's stdin and stdout as files of their own, read and written unbuffered (std's
/// buffered handles would hide input from `poll`).
pub(crate) fn stdio() -> Result<(File, File), ConsoleError> {
    let dup = |fd: BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map(File::from)
            .map_err(|source| ConsoleError::Terminal {
                op: "duplicate stdio",
                source,
            })
    };
    Ok((
        dup(std::io::stdin().as_fd())?,
        dup(std::io::stdout().as_fd())?,
    ))
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixStream;

    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};

    use super::*;

    #[test]
    fn receives_the_descriptor_libcontainer_sends() {
        let dir = tempfile::tempdir().unwrap();
        let socket = ConsoleSocket::bind(&dir.path().join("console")).unwrap();
        let (file, expected) = {
            let path = dir.path().join("master");
            std::fs::write(&path, "pty").unwrap();
            (
                File::open(&path).unwrap(),
                std::fs::metadata(&path).unwrap(),
            )
        };
        // As libcontainer's setup_console: the name "/dev/ptmx" and the fd, then close.
        let conn = UnixStream::connect(socket.path()).unwrap();
        let fds = [file.as_fd()];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&fds)));
        sendmsg(
            &conn,
            &[IoSlice::new(b"/dev/ptmx")],
            &mut control,
            SendFlags::empty(),
        )
        .unwrap();
        drop(conn);
        let received = File::from(socket.receive().unwrap());
        assert_eq!(received.metadata().unwrap().ino(), expected.ino());
    }

    #[test]
    fn a_connection_without_a_descriptor_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let socket = ConsoleSocket::bind(&dir.path().join("console")).unwrap();
        drop(UnixStream::connect(socket.path()).unwrap());
        assert!(matches!(socket.receive(), Err(ConsoleError::NoMaster(_))));
    }

    #[test]
    fn a_file_is_no_terminal() {
        let file = tempfile::tempfile().unwrap();
        assert!(RawMode::enter(file.as_fd()).unwrap().is_none());
        copy_size(&file, &file).unwrap();
    }
}
