//! The default seccomp filter: a Docker-format profile, compiled for one container, with Docker's
//! namespace rules enforced on top.
//!
//! The allowlist itself is not ours to maintain: Skiff reads the profile the containers project
//! ships with Debian (`/usr/share/containers/seccomp.json`, package
//! golang-github-containers-common), or one the node configures, and compiles it as Docker does:
//! a rule applies when the host architecture and the container's capabilities satisfy its
//! `includes` and none of its `excludes`. That profile is Podman's, which lets any container
//! `unshare`, `setns` and `mount` (Podman needs them rootless); Docker's default refuses those to
//! containers without CAP_SYS_ADMIN, and so does Skiff: they fail with EPERM, `clone` is allowed
//! only without namespace flags, and `clone3` (whose flags a filter cannot see) fails with
//! ENOSYS so that libc falls back to `clone`. A privileged container gets no filter at all.

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use serde::Deserialize;

/// Where the default profile is read from.
pub const DEFAULT_PROFILE: &str = "/usr/share/containers/seccomp.json";

/// Syscalls Docker reserves to containers with CAP_SYS_ADMIN.
const NEEDS_SYS_ADMIN: &[&str] = &[
    "mount",
    "umount",
    "umount2",
    "unshare",
    "setns",
    "pivot_root",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
];

/// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (Docker's mask).
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

/// A profile that could not be read or compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// Not a Docker-format profile.
    #[error("invalid seccomp profile: {0}")]
    Parse(String),
    /// The profile has nothing for this architecture.
    #[error("seccomp profile has no entry for architecture {0}")]
    Arch(String),
    /// oci-spec refused a value.
    #[error("building the seccomp filter: {0}")]
    Build(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    syscalls: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    names: Vec<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Deserialize, Default)]
struct Filter {
    #[serde(default)]
    caps: Vec<String>,
    #[serde(default)]
    arches: Vec<String>,
}

/// Docker's name for the machine's architecture (`amd64`, `arm64`).
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn scmp_arch(docker: &str) -> Option<Arch> {
    match docker {
        "amd64" => Some(Arch::ScmpArchX86_64),
        "arm64" => Some(Arch::ScmpArchAarch64),
        _ => None,
    }
}

/// The `CAP_*` name profiles use (oci-spec's serde name; its Display drops the prefix).
fn cap_name(c: &Capability) -> String {
    serde_json::to_value(c)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Compiles `profile` (Docker's JSON format) for a container on `arch` with `caps`.
pub fn compile(
    profile: &str,
    arch: &str,
    caps: &[Capability],
) -> Result<LinuxSeccomp, SeccompError> {
    let p: Profile =
        serde_json::from_str(profile).map_err(|e| SeccompError::Parse(e.to_string()))?;
    let want = scmp_arch(arch).ok_or_else(|| SeccompError::Arch(arch.to_owned()))?;
    let map = p
        .arch_map
        .iter()
        .find(|m| m.architecture == want)
        .ok_or_else(|| SeccompError::Arch(arch.to_owned()))?;
    let mut architectures = vec![map.architecture];
    architectures.extend(map.sub_architectures.iter().copied());

    let cap_names: Vec<String> = caps.iter().map(cap_name).collect();
    let has = |c: &String| cap_names.iter().any(|n| n == c);
    let sys_admin = has(&"CAP_SYS_ADMIN".to_owned());
    let build = |e: oci_spec::OciSpecError| SeccompError::Build(e.to_string());
    let mut syscalls: Vec<LinuxSyscall> = Vec::new();
    for rule in &p.syscalls {
        let applies = (rule.includes.arches.is_empty()
            || rule.includes.arches.iter().any(|a| a == arch))
            && rule.includes.caps.iter().all(has)
            && !rule.excludes.arches.iter().any(|a| a == arch)
            && !rule.excludes.caps.iter().any(has);
        if !applies {
            continue;
        }
        let names: Vec<String> = rule
            .names
            .iter()
            .filter(|n| {
                // Docker's namespace rules replace whatever the profile says of these.
                let restricted =
                    NEEDS_SYS_ADMIN.contains(&n.as_str()) || *n == "clone" || *n == "clone3";
                sys_admin || !restricted || rule.action != LinuxSeccompAction::ScmpActAllow
            })
            .cloned()
            .collect();
        if names.is_empty() {
            continue;
        }
        let mut s = LinuxSyscallBuilder::default()
            .names(names)
            .action(rule.action);
        if let Some(args) = rule.args.clone().filter(|a| !a.is_empty()) {
            s = s.args(args);
        }
        if let Some(e) = rule.errno_ret {
            s = s.errno_ret(e);
        }
        syscalls.push(s.build().map_err(build)?);
    }
    if !sys_admin {
        let errno = |names: &[&str], errno: u32| {
            LinuxSyscallBuilder::default()
                .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(errno)
                .build()
        };
        syscalls.push(errno(NEEDS_SYS_ADMIN, EPERM).map_err(build)?);
        syscalls.push(errno(&["clone3"], ENOSYS).map_err(build)?);
        let no_namespaces = oci_spec::runtime::LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(CLONE_NAMESPACE_FLAGS)
            .value_two(0u64)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()
            .map_err(build)?;
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_owned()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![no_namespaces])
                .build()
                .map_err(build)?,
        );
    }
    let mut seccomp = LinuxSeccompBuilder::default()
        .default_action(p.default_action)
        .architectures(architectures)
        .syscalls(syscalls);
    if let Some(e) = p.default_errno_ret {
        seccomp = seccomp.default_errno_ret(e);
    }
    seccomp.build().map_err(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"{
      "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
      "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                  {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []}],
      "syscalls": [
        {"names": ["read", "write", "mount", "unshare", "clone", "clone3"], "action": "SCMP_ACT_ALLOW"},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
        {"names": ["chroot"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_CHROOT"]}},
        {"names": ["chroot"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1, "excludes": {"caps": ["CAP_SYS_CHROOT"]}}
      ]}"#;

    fn names(s: &LinuxSeccomp, action: LinuxSeccompAction) -> Vec<String> {
        s.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.action() == action && r.args().is_none())
            .flat_map(|r| r.names().clone())
            .collect()
    }

    #[test]
    fn compiles_by_arch_and_caps_with_dockers_namespace_rules() {
        let s = compile(PROFILE, "amd64", &[Capability::Chown]).unwrap();
        assert_eq!(
            s.architectures().as_ref().unwrap(),
            &vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86]
        );
        assert_eq!(s.default_errno_ret(), Some(38));
        let allowed = names(&s, LinuxSeccompAction::ScmpActAllow);
        assert_eq!(allowed, ["read", "write", "arch_prctl"]);
        let denied = names(&s, LinuxSeccompAction::ScmpActErrno);
        for n in ["chroot", "mount", "unshare", "setns", "clone3"] {
            assert!(denied.contains(&n.to_owned()), "{n} denied: {denied:?}");
        }
        let clone = s
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .find(|r| r.names() == &["clone"])
            .unwrap();
        assert_eq!(
            clone.args().as_ref().unwrap()[0].value(),
            CLONE_NAMESPACE_FLAGS
        );

        let s = compile(
            PROFILE,
            "arm64",
            &[Capability::SysAdmin, Capability::SysChroot],
        )
        .unwrap();
        let allowed = names(&s, LinuxSeccompAction::ScmpActAllow);
        assert_eq!(
            allowed,
            [
                "read", "write", "mount", "unshare", "clone", "clone3", "chroot"
            ]
        );
        assert!(names(&s, LinuxSeccompAction::ScmpActErrno).is_empty());
    }

    #[test]
    fn bad_profiles_are_errors() {
        assert!(
            compile("{}", "amd64", &[])
                .unwrap_err()
                .to_string()
                .contains("invalid seccomp profile")
        );
        assert!(
            compile(PROFILE, "s390x", &[])
                .unwrap_err()
                .to_string()
                .contains("s390x")
        );
    }
}
