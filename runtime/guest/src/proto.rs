//! The wire between the host side of a microVM (skiffd's VM shim) and the guest agent, carried
//! by one virtio-serial port (or, with VMMs that only offer it, a vsock stream).
//!
//! A frame is a 4-byte big-endian length, then that many bytes: a kind byte and its body.
//! Kind 0 is a JSON [`Message`]; kinds 1 and 2 are a process's stdout and stderr, as
//! `id length (2 bytes, big-endian) | id | bytes`, so that output, the bulk of the traffic, is neither
//! escaped nor base64'd. The same framing serves the shim's own control socket, where the
//! per-container processes (`skiff-shim vm-run`) talk to the VM shim: it routes frames by id.
//!
//! A process is named by an id chosen by the host (a container's runtime id, or an exec's),
//! unique within the VM.

use std::io::{self, Read, Write};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The largest frame either side accepts (a frame's length says how much to allocate).
pub const MAX_FRAME: usize = 1 << 20;

/// The name of the agent's virtio-serial port (`/sys/class/virtio-ports/*/name` in the guest).
pub const PORT_NAME: &str = "skiff.agent";

/// The protocol's version, sent in [`Message::Ready`].
pub const VERSION: u32 = 2;

/// What a process runs, where, and as whom: the OCI process of the container's spec, resolved
/// by the host (numeric ids: the guest has no user database of its own to consult).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// The host's name for the process, unique in the VM.
    pub id: String,
    /// The serial of the virtio-blk disk holding its root filesystem.
    pub disk: String,
    /// argv; `args[0]` is looked up in the `PATH` of `env` inside the root.
    pub args: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    /// Working directory inside the root.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    /// Its capability sets, as the kernel's bit masks (the container spec's); none: the
    /// agent's own (all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    /// It cannot gain privileges by exec (setuid binaries, file capabilities).
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Its stdin is the host's to write (`Stream::Stdin` frames); otherwise /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// A terminal as its stdin, stdout and stderr (and controlling terminal), sized by
    /// [`Message::Resize`]; its output comes as stdout.
    #[serde(default)]
    pub tty: bool,
    /// Volumes: shared directories of the host (virtio-fs) bound into the root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<VolumeMount>,
}

/// A process's capability sets (bit `n` is capability number `n`); its inheritable and
/// ambient sets are empty, as a container spec's are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// The bounding set: what it and its children can ever have.
    pub bounding: u64,
    /// The effective set.
    pub effective: u64,
    /// The permitted set.
    pub permitted: u64,
}

/// A volume in a process's root: a virtio-fs share of the VM, by its tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// The share's virtio-fs tag.
    pub tag: String,
    /// Where in the root (absolute).
    pub destination: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// An IPv4 address with its prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cidr {
    /// The address.
    pub address: Ipv4Addr,
    /// The prefix length.
    pub prefix_len: u8,
}

/// A network interface of the guest: one of the task namespace's, whose MAC address it has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// The MAC address the VMM gave the device (how the agent finds it).
    pub mac: [u8; 6],
    /// The name it gets (`eth0`, `meta0`).
    pub name: String,
    /// Its MTU (the namespace interface's); 0 leaves the device's.
    #[serde(default)]
    pub mtu: u32,
    /// Its addresses.
    pub addresses: Vec<Cidr>,
}

/// A route of the guest's main table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteConfig {
    /// The destination.
    pub destination: Cidr,
    /// The next hop; none: on-link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Ipv4Addr>,
    /// The interface, by its given name.
    pub dev: String,
    /// The preferred source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Ipv4Addr>,
}

/// The guest's network: the task namespace's, interface for interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// The interfaces (loopback is always brought up).
    pub interfaces: Vec<Interface>,
    /// The routes, added in order after the addresses.
    pub routes: Vec<RouteConfig>,
}

/// A control message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Message {
    /// Agent → host: booted, its devices found; ready for processes.
    Ready {
        /// [`VERSION`].
        version: u32,
        /// The guest kernel's uptime when the agent was ready.
        uptime_ms: u64,
    },
    /// Host → agent, once after `ready` and before any process: the guest's network.
    Configure {
        /// The interfaces and routes.
        network: NetworkConfig,
    },
    /// Agent → host: the answer to `configure`.
    Configured {
        /// What could not be set up, if anything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// Host → agent: start a process.
    Start(Process),
    /// Agent → host: the process runs.
    Started {
        /// Its id.
        id: String,
        /// Its pid in the guest.
        pid: i32,
    },
    /// Agent → host: the process could not be started.
    Failed {
        /// Its id.
        id: String,
        /// Why.
        message: String,
    },
    /// Host → agent: send a signal to a process (and its process group).
    Signal {
        /// Its id.
        id: String,
        /// The signal number.
        signal: i32,
    },
    /// Host → agent: the window size of a process's terminal.
    Resize {
        /// Its id.
        id: String,
        /// Rows.
        rows: u16,
        /// Columns.
        cols: u16,
    },
    /// Agent → host: the process ended; its output has been sent before this.
    Exited {
        /// Its id.
        id: String,
        /// Exit code, or 128 + the signal that killed it.
        exit_code: i32,
        /// That signal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
        /// Killed by the guest kernel's OOM killer (the VM's memory is the task's).
        #[serde(default)]
        oom_killed: bool,
    },
    /// Host → agent: kill everything and power the VM off.
    Shutdown,
}

impl Message {
    /// The process a message is about, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Start(p) => Some(&p.id),
            Self::Started { id, .. }
            | Self::Failed { id, .. }
            | Self::Signal { id, .. }
            | Self::Resize { id, .. }
            | Self::Exited { id, .. } => Some(id),
            Self::Ready { .. }
            | Self::Configure { .. }
            | Self::Configured { .. }
            | Self::Shutdown => None,
        }
    }
}

/// Which stream of a process a data frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output (a terminal's output too).
    Stdout,
    /// Standard error.
    Stderr,
    /// Standard input, host to agent (a terminal's input too); empty data closes it.
    Stdin,
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A control message.
    Message(Message),
    /// Output of a process.
    Output {
        /// The process.
        id: String,
        /// Which stream.
        stream: Stream,
        /// The bytes, as the process wrote them.
        data: Vec<u8>,
    },
}

impl Frame {
    /// The process the frame is about, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            Self::Message(m) => m.id(),
            Self::Output { id, .. } => Some(id),
        }
    }
}

/// A frame that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The stream failed.
    #[error("reading a frame: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something that is not a frame of this protocol.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

const KIND_MESSAGE: u8 = 0;
const KIND_STDOUT: u8 = 1;
const KIND_STDERR: u8 = 2;
const KIND_STDIN: u8 = 3;

/// Encodes `frame` (one `write_all`, so that frames from several threads sharing a locked
/// writer never interleave).
pub fn encode(frame: &Frame) -> Vec<u8> {
    let mut body = Vec::new();
    match frame {
        Frame::Message(m) => {
            body.push(KIND_MESSAGE);
            body.extend(serde_json::to_vec(m).expect("messages serialize"));
        }
        Frame::Output { id, stream, data } => {
            body.push(match stream {
                Stream::Stdout => KIND_STDOUT,
                Stream::Stderr => KIND_STDERR,
                Stream::Stdin => KIND_STDIN,
            });
            // Ids are a container's runtime id (a task id and a name of up to 255 bytes) or
            // an exec's, longer: two bytes of length.
            let id = &id.as_bytes()[..id.len().min(usize::from(u16::MAX))];
            body.extend_from_slice(&(id.len() as u16).to_be_bytes());
            body.extend_from_slice(id);
            body.extend_from_slice(data);
        }
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend(body);
    out
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, frame: &Frame) -> io::Result<()> {
    w.write_all(&encode(frame))?;
    w.flush()
}

/// Reads one frame; `None` at a clean end of the stream (between frames).
pub fn read_frame(r: &mut impl Read) -> Result<Option<Frame>, ProtoError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ProtoError::Malformed("the stream ended in a length".into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(ProtoError::Malformed(format!(
            "a frame of {len} bytes (1 to {MAX_FRAME})"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

fn decode(body: &[u8]) -> Result<Frame, ProtoError> {
    let (kind, rest) = body
        .split_first()
        .expect("non-empty: checked by the caller");
    let stream = match *kind {
        KIND_MESSAGE => {
            return serde_json::from_slice(rest)
                .map(Frame::Message)
                .map_err(|e| ProtoError::Malformed(format!("message: {e}")));
        }
        KIND_STDOUT => Stream::Stdout,
        KIND_STDERR => Stream::Stderr,
        KIND_STDIN => Stream::Stdin,
        k => return Err(ProtoError::Malformed(format!("unknown kind {k}"))),
    };
    let (n, rest) = rest
        .split_first_chunk::<2>()
        .ok_or_else(|| ProtoError::Malformed("output without an id".into()))?;
    let n = usize::from(u16::from_be_bytes(*n));
    if rest.len() < n {
        return Err(ProtoError::Malformed(
            "output id longer than its frame".into(),
        ));
    }
    let id = std::str::from_utf8(&rest[..n])
        .map_err(|_| ProtoError::Malformed("output id is not UTF-8".into()))?;
    Ok(Frame::Output {
        id: id.to_owned(),
        stream,
        data: rest[n..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(f: Frame) {
        let bytes = encode(&f);
        let back = read_frame(&mut &bytes[..]).unwrap().unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn frames_roundtrip() {
        roundtrip(Frame::Message(Message::Ready {
            version: VERSION,
            uptime_ms: 2100,
        }));
        roundtrip(Frame::Message(Message::Start(Process {
            id: "t-web".into(),
            disk: "c0".into(),
            args: vec!["sh".into(), "-c".into(), "echo hi; exit 7".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 1000,
            gid: 1000,
            additional_gids: vec![50],
            capabilities: Some(Capabilities {
                bounding: 0xa80425fb,
                effective: 0xa80425fb,
                permitted: 0xa80425fb,
            }),
            no_new_privileges: true,
            stdin: true,
            tty: true,
            mounts: vec![VolumeMount {
                tag: "v0".into(),
                destination: "/data".into(),
                read_only: true,
            }],
        })));
        roundtrip(Frame::Message(Message::Resize {
            id: "t-web".into(),
            rows: 40,
            cols: 100,
        }));
        roundtrip(Frame::Output {
            id: "t-web.exec-1".into(),
            stream: Stream::Stdin,
            data: b"ls\r".to_vec(),
        });
        let cidr = |a: [u8; 4], prefix_len| Cidr {
            address: a.into(),
            prefix_len,
        };
        roundtrip(Frame::Message(Message::Configure {
            network: NetworkConfig {
                interfaces: vec![Interface {
                    mac: [2, 0, 0, 0, 0, 1],
                    name: "eth0".into(),
                    mtu: 1450,
                    addresses: vec![cidr([10, 0, 0, 2], 32)],
                }],
                routes: vec![
                    RouteConfig {
                        destination: cidr([169, 254, 170, 2], 32),
                        via: None,
                        dev: "eth0".into(),
                        source: Some([10, 0, 0, 2].into()),
                    },
                    RouteConfig {
                        destination: cidr([0, 0, 0, 0], 0),
                        via: Some([169, 254, 170, 2].into()),
                        dev: "eth0".into(),
                        source: None,
                    },
                ],
            },
        }));
        roundtrip(Frame::Message(Message::Configured {
            error: Some("no interface 02:00:00:00:00:01".into()),
        }));
        roundtrip(Frame::Message(Message::Exited {
            id: "x".into(),
            exit_code: 137,
            signal: Some(9),
            oom_killed: true,
        }));
        roundtrip(Frame::Output {
            id: format!("{}-{}.exec-1-2", "f".repeat(32), "n".repeat(255)),
            stream: Stream::Stdout,
            data: b"long ids".to_vec(),
        });
        roundtrip(Frame::Output {
            id: "t-web".into(),
            stream: Stream::Stderr,
            data: b"\0binary\xff".to_vec(),
        });
    }

    #[test]
    fn messages_are_camel_case_json() {
        let f = encode(&Frame::Message(Message::Exited {
            id: "a".into(),
            exit_code: 7,
            signal: None,
            oom_killed: false,
        }));
        let json = std::str::from_utf8(&f[5..]).unwrap();
        assert_eq!(
            json,
            r#"{"type":"exited","id":"a","exitCode":7,"oomKilled":false}"#
        );
    }

    #[test]
    fn several_frames_then_a_clean_end() {
        let mut bytes = encode(&Frame::Message(Message::Shutdown));
        bytes.extend(encode(&Frame::Output {
            id: "a".into(),
            stream: Stream::Stdout,
            data: b"hi\n".to_vec(),
        }));
        let mut r = &bytes[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Some(Frame::Message(Message::Shutdown))
        );
        assert!(matches!(
            read_frame(&mut r).unwrap(),
            Some(Frame::Output { .. })
        ));
        assert_eq!(read_frame(&mut r).unwrap(), None);
    }

    #[test]
    fn malformed_frames_are_refused() {
        let cases: &[&[u8]] = &[
            &[0, 0, 0, 0],
            &[0xff, 0, 0, 0],
            &[0, 0, 0, 2, 9, 0],
            &[0, 0, 0, 3, 0, b'{', b'x'],
            &[0, 0, 0, 4, 1, 0, 5, b'a'],
            &[0, 0, 0, 2, 1, 0],
            &[0, 0],
        ];
        for c in cases {
            assert!(read_frame(&mut &c[..]).is_err(), "{c:?}");
        }
    }
}
