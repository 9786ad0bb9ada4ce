//! Task placement, as ECS places tasks on EC2 and EXTERNAL instances: pure functions over a
//! snapshot of the cluster's container instances (what each has left, its attributes, the tasks
//! it hosts), so that the rules are unit-tested without a database and the caller decides how
//! the snapshot is kept consistent (RunTask reads and writes it in one immediate transaction).
//!
//! For each task: an instance must be ACTIVE (DRAINING ones never get new tasks), satisfy the
//! constraints (`memberOf` with a cluster query language expression, `distinctInstance`), match
//! `runtimePlatform.cpuArchitecture`, and have the CPU, memory and fixed host ports left. Among
//! those that do, the strategies pick one, applied in order as tie-breakers: `binpack` (least
//! remaining cpu or memory first), `spread` (fewest tasks of the group on the instance, or on
//! instances sharing its value of an attribute), `random`. A task nothing fits becomes
//! `failures` with ECS's reasons, one per instance and reason.
//!
//! An instance whose agent is disconnected (no sync for `heartbeat_timeout_seconds`) gets no
//! task, as on ECS. Limitation: `registeredAt` is not a supported query subject.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;

/// Errors of placement's inputs: strategies, constraints and expressions ECS would refuse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// A cluster query language expression (`memberOf`, ListContainerInstances' `filter`)
    /// does not parse.
    #[error("expression {expression:?}: at position {position}: {message}")]
    Syntax {
        /// The expression.
        expression: String,
        /// The byte offset of the problem.
        position: usize,
        /// What was expected.
        message: String,
    },
    /// A strategy or constraint is not one ECS knows, or its field is wrong for it.
    #[error("{0}")]
    Invalid(String),
}

/// A container instance as placement sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The instance id.
    pub id: String,
    /// Its `ec2InstanceId` (`sk-...`).
    pub ec2_instance_id: String,
    /// `ACTIVE` or `DRAINING`.
    pub status: String,
    /// Whether its agent is connected.
    pub agent_connected: bool,
    /// Its agent's version.
    pub agent_version: String,
    /// Attributes by name.
    pub attributes: BTreeMap<String, Option<String>>,
    /// CPU units left.
    pub cpu: i64,
    /// MiB left.
    pub memory: i64,
    /// Host ports taken (by the node or its tasks).
    pub ports: BTreeSet<u16>,
    /// The groups of the tasks it hosts, with how many tasks of each.
    pub groups: BTreeMap<String, i64>,
}

/// What one task needs.
#[derive(Clone, Debug, Default)]
pub struct Needs {
    /// CPU units.
    pub cpu: i64,
    /// MiB.
    pub memory: i64,
    /// Fixed host ports.
    pub ports: Vec<u16>,
    /// The `ecs.cpu-architecture` value it requires (`x86_64`, `arm64`).
    pub arch: Option<String>,
    /// Attributes an instance must have, whatever their value (ECS's `requiresAttributes`):
    /// `ecs.capability.skiff.microvm` for a FARGATE task.
    pub requires: Vec<String>,
    /// Its group (`family:<family>` by default).
    pub group: String,
}

/// The resource a `binpack` packs by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource {
    /// CPU units.
    Cpu,
    /// Memory.
    Memory,
}

/// A placement strategy (ECS `PlacementStrategy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Least remaining of the resource first.
    Binpack(Resource),
    /// Fewest tasks of the group per instance (`None`) or per value of an attribute.
    Spread(Option<String>),
    /// Any.
    Random,
}

impl Strategy {
    /// From the API's `type` and `field`.
    pub fn parse(kind: &str, field: Option<&str>) -> Result<Self, PlacementError> {
        let bad = || {
            PlacementError::Invalid(format!(
                "placementStrategy {kind}: field {field:?} is not valid"
            ))
        };
        match (kind, field) {
            ("random", None) => Ok(Self::Random),
            ("binpack", Some(f)) if f.eq_ignore_ascii_case("cpu") => {
                Ok(Self::Binpack(Resource::Cpu))
            }
            ("binpack", Some(f)) if f.eq_ignore_ascii_case("memory") => {
                Ok(Self::Binpack(Resource::Memory))
            }
            ("spread", Some(f)) if f.eq_ignore_ascii_case("instanceId") || f == "host" => {
                Ok(Self::Spread(None))
            }
            ("spread", Some(f)) => match f.strip_prefix("attribute:") {
                Some(a) if !a.is_empty() => Ok(Self::Spread(Some(a.to_owned()))),
                _ => Err(bad()),
            },
            ("random" | "binpack", _) => Err(bad()),
            _ => Err(PlacementError::Invalid(format!(
                "placementStrategy type {kind} is not valid: binpack, random or spread"
            ))),
        }
    }
}

/// A placement constraint (ECS `PlacementConstraint`).
#[derive(Clone, Debug)]
pub enum Constraint {
    /// Each task of the group on a different instance.
    DistinctInstance,
    /// Only instances the expression selects.
    MemberOf(Expr),
}

impl Constraint {
    /// From the API's `type` and `expression`.
    pub fn parse(kind: &str, expression: Option<&str>) -> Result<Self, PlacementError> {
        match (kind, expression) {
            ("distinctInstance", None) => Ok(Self::DistinctInstance),
            ("distinctInstance", Some(_)) => Err(PlacementError::Invalid(
                "distinctInstance takes no expression".into(),
            )),
            ("memberOf", Some(e)) if e.len() <= 2000 => Ok(Self::MemberOf(Expr::parse(e)?)),
            ("memberOf", _) => Err(PlacementError::Invalid(
                "memberOf needs an expression of at most 2000 characters".into(),
            )),
            _ => Err(PlacementError::Invalid(format!(
                "placementConstraint type {kind} is not valid: distinctInstance or memberOf"
            ))),
        }
    }
}

/// Why an instance cannot take a task, with ECS's `failures[].reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// A `memberOf` expression does not select it.
    MemberOf,
    /// `distinctInstance`: it hosts a task of the group.
    DistinctInstance,
    /// It lacks a required attribute (the CPU architecture).
    Attribute,
    /// Not enough CPU.
    Cpu,
    /// Not enough memory.
    Memory,
    /// A host port is taken.
    Ports,
}

impl Reason {
    /// The `reason` ECS reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MemberOf => "MemberOf placement constraint unsatisfied.",
            Self::DistinctInstance => "DistinctInstance placement constraint unsatisfied.",
            Self::Attribute => "ATTRIBUTE",
            Self::Cpu => "RESOURCE:CPU",
            Self::Memory => "RESOURCE:MEMORY",
            Self::Ports => "RESOURCE:PORTS",
        }
    }
}

/// The outcome of placing `count` tasks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The chosen instance (index into the candidates) of each placed task, in order.
    pub placed: Vec<usize>,
    /// For the tasks that could not be placed: each instance's id and why.
    pub failures: Vec<(String, Reason)>,
}

/// Why `c` cannot take a task needing `n`, or `None` when it can.
/// Whether every `memberOf` of `constraints` selects `c` (a DAEMON service's eligibility).
pub fn member_of_all(c: &Candidate, constraints: &[Constraint]) -> bool {
    constraints.iter().all(|k| match k {
        Constraint::MemberOf(e) => e.eval(c),
        Constraint::DistinctInstance => true,
    })
}

fn misfit(c: &Candidate, n: &Needs, constraints: &[Constraint]) -> Option<Reason> {
    for k in constraints {
        match k {
            Constraint::MemberOf(e) if !e.eval(c) => return Some(Reason::MemberOf),
            Constraint::DistinctInstance if c.groups.contains_key(&n.group) => {
                return Some(Reason::DistinctInstance);
            }
            _ => {}
        }
    }
    if let Some(arch) = &n.arch
        && c.attributes
            .get("ecs.cpu-architecture")
            .and_then(Option::as_deref)
            != Some(arch.as_str())
    {
        return Some(Reason::Attribute);
    }
    if n.requires.iter().any(|a| !c.attributes.contains_key(a)) {
        return Some(Reason::Attribute);
    }
    if c.cpu < n.cpu {
        return Some(Reason::Cpu);
    }
    if c.memory < n.memory {
        return Some(Reason::Memory);
    }
    if n.ports.iter().any(|p| c.ports.contains(p)) {
        return Some(Reason::Ports);
    }
    None
}

/// How many tasks of `group` `c` hosts.
fn in_group(c: &Candidate, group: &str) -> i64 {
    c.groups.get(group).copied().unwrap_or(0)
}

/// For `spread` by an attribute: how many tasks of `group` the instances with each value of
/// it host (instances without it share one bucket). Empty for other strategies.
fn spread_counts<'a>(
    all: &'a [Candidate],
    s: &Strategy,
    group: &str,
) -> BTreeMap<Option<&'a Option<String>>, i64> {
    let mut out = BTreeMap::new();
    if let Strategy::Spread(Some(a)) = s {
        for c in all {
            *out.entry(c.attributes.get(a)).or_default() += in_group(c, group);
        }
    }
    out
}

/// The most strategies a placement chains (ECS's limit).
pub const MAX_STRATEGIES: usize = 5;

/// A small deterministic generator (xorshift64*) for `random`, seeded by the caller.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Places `count` tasks needing `needs` on `candidates`, updating them as tasks land (so a
/// caller can record the result and place more). `seed` drives `random`.
pub fn place(
    candidates: &mut [Candidate],
    needs: &Needs,
    count: usize,
    strategies: &[Strategy],
    constraints: &[Constraint],
    seed: u64,
) -> Placement {
    let mut out = Placement::default();
    let mut rng = seed | 1;
    let usable = |c: &Candidate| c.status == "ACTIVE" && c.agent_connected;
    for _ in 0..count {
        // One pass: each instance that fits gets one key per strategy, and the least key wins,
        // the strategies in order as tie-breakers (no allocation per instance: placement is
        // linear in the instances, per task, under the store's write lock).
        let spread: Vec<_> = strategies
            .iter()
            .map(|s| spread_counts(candidates, s, &needs.group))
            .collect();
        let mut best: Option<([i64; MAX_STRATEGIES], usize)> = None;
        for (i, c) in candidates.iter().enumerate() {
            if !usable(c) || misfit(c, needs, constraints).is_some() {
                continue;
            }
            let mut key = [0; MAX_STRATEGIES];
            for (k, s) in strategies.iter().take(MAX_STRATEGIES).enumerate() {
                key[k] = match s {
                    Strategy::Binpack(Resource::Cpu) => c.cpu,
                    Strategy::Binpack(Resource::Memory) => c.memory,
                    Strategy::Spread(None) => in_group(c, &needs.group),
                    Strategy::Spread(Some(a)) => spread[k][&c.attributes.get(a)],
                    Strategy::Random => (next_random(&mut rng) >> 1) as i64,
                };
            }
            if best.is_none_or(|b| (key, i) < b) {
                best = Some((key, i));
            }
        }
        let Some((_, chosen)) = best else {
            // Nothing changes from here on: the rest of the tasks fail for the same reasons.
            out.failures = candidates
                .iter()
                .filter(|c| usable(c))
                .filter_map(|c| Some((c.id.clone(), misfit(c, needs, constraints)?)))
                .collect();
            break;
        };
        let c = &mut candidates[chosen];
        c.cpu -= needs.cpu;
        c.memory -= needs.memory;
        c.ports.extend(needs.ports.iter().copied());
        *c.groups.entry(needs.group.clone()).or_default() += 1;
        out.placed.push(chosen);
    }
    out
}

/// A cluster query language expression.
#[derive(Clone, Debug)]
pub enum Expr {
    /// Both.
    And(Box<Expr>, Box<Expr>),
    /// Either.
    Or(Box<Expr>, Box<Expr>),
    /// Not.
    Not(Box<Expr>),
    /// `subject operator [argument]`.
    Cmp(Subject, Op),
}

/// What an expression tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// `attribute:<name>`.
    Attribute(String),
    /// `ec2InstanceId`.
    Ec2InstanceId,
    /// `agentConnected`.
    AgentConnected,
    /// `agentVersion`.
    AgentVersion,
    /// `runningTasksCount` (here: the tasks it holds that are not yet STOPPED).
    RunningTasksCount,
    /// `task:group` (the groups of the tasks the instance hosts).
    TaskGroup,
}

/// An operator with its argument.
#[derive(Clone, Debug)]
pub enum Op {
    /// `==`, `equals`.
    Eq(String),
    /// `!=`, `not_equals`.
    Ne(String),
    /// `>`, `>=`, `<`, `<=` (numbers, dotted versions, else text): the orderings accepted.
    Order(Vec<Ordering>, String),
    /// `exists`.
    Exists,
    /// `!exists`, `not_exists`.
    NotExists,
    /// `in [..]`.
    In(Vec<String>),
    /// `!in`, `not_in`.
    NotIn(Vec<String>),
    /// `=~`, `matches` (the whole value).
    Matches(Regex),
    /// `!~`, `not_matches`.
    NotMatches(Regex),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Open,
    Close,
    LBracket,
    RBracket,
    Comma,
    Bang,
    Sym(&'static str),
    Word(String),
    End,
}

/// Splits an expression into tokens, each with its byte offset.
fn lex(s: &str) -> Result<Vec<(usize, Tok)>, (usize, String)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let ch = s[i..].chars().next().unwrap_or(' ');
        if ch.is_whitespace() {
            i += ch.len_utf8();
            continue;
        }
        let c = b[i];
        let start = i;
        let two = s.get(i..i + 2).unwrap_or("");
        let tok = match c {
            b'(' => Tok::Open,
            b')' => Tok::Close,
            b'[' => Tok::LBracket,
            b']' => Tok::RBracket,
            b',' => Tok::Comma,
            b'\'' | b'"' => {
                let end = s[i + 1..]
                    .find(c as char)
                    .ok_or((i, "unterminated quoted value".to_owned()))?;
                i += end + 2;
                out.push((start, Tok::Word(s[start + 1..i - 1].to_owned())));
                continue;
            }
            _ => match ["==", "!=", ">=", "<=", "=~", "!~", "&&", "||"]
                .into_iter()
                .find(|op| *op == two)
            {
                Some(op) => {
                    i += 2;
                    out.push((start, Tok::Sym(op)));
                    continue;
                }
                None if c == b'!' => Tok::Bang,
                None if c == b'>' => Tok::Sym(">"),
                None if c == b'<' => Tok::Sym("<"),
                None if c == b'=' || c == b'&' || c == b'|' => {
                    return Err((i, format!("unexpected {:?}", c as char)));
                }
                None => {
                    let len = s[i..]
                        .find(|ch: char| ch.is_whitespace() || "()[],'\"=!<>&|".contains(ch))
                        .unwrap_or(s.len() - i);
                    i += len;
                    out.push((start, Tok::Word(s[start..i].to_owned())));
                    continue;
                }
            },
        };
        i += 1;
        out.push((start, tok));
    }
    out.push((s.len(), Tok::End));
    Ok(out)
}

struct Parser<'a> {
    text: &'a str,
    toks: Vec<(usize, Tok)>,
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].1
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.at].1.clone();
        if t != Tok::End {
            self.at += 1;
        }
        t
    }

    fn error(&self, message: impl Into<String>) -> PlacementError {
        PlacementError::Syntax {
            expression: self.text.to_owned(),
            position: self.toks[self.at].0,
            message: message.into(),
        }
    }

    fn word_is(&self, words: &[&str]) -> bool {
        matches!(self.peek(), Tok::Word(w) if words.iter().any(|x| w.eq_ignore_ascii_case(x)))
    }

    fn or(&mut self) -> Result<Expr, PlacementError> {
        let mut e = self.and()?;
        while self.peek() == &Tok::Sym("||") || self.word_is(&["or"]) {
            self.next();
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, PlacementError> {
        let mut e = self.unary()?;
        while self.peek() == &Tok::Sym("&&") || self.word_is(&["and"]) {
            self.next();
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, PlacementError> {
        if self.peek() == &Tok::Bang || self.word_is(&["not"]) {
            self.next();
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == &Tok::Open {
            self.next();
            let e = self.or()?;
            if self.peek() != &Tok::Close {
                return Err(self.error("expected ')'"));
            }
            self.next();
            return Ok(e);
        }
        self.comparison()
    }

    fn subject(&mut self) -> Result<Subject, PlacementError> {
        let Tok::Word(w) = self.peek().clone() else {
            return Err(self.error("expected a subject (attribute:<name>, ec2InstanceId, ...)"));
        };
        let s = match w.as_str() {
            "ec2InstanceId" => Subject::Ec2InstanceId,
            "agentConnected" => Subject::AgentConnected,
            "agentVersion" => Subject::AgentVersion,
            "runningTasksCount" => Subject::RunningTasksCount,
            "task:group" => Subject::TaskGroup,
            _ => match w.strip_prefix("attribute:") {
                Some(a) if !a.is_empty() => Subject::Attribute(a.to_owned()),
                _ => return Err(self.error(format!("unknown subject {w:?}"))),
            },
        };
        self.next();
        Ok(s)
    }

    fn value(&mut self) -> Result<String, PlacementError> {
        match self.peek().clone() {
            Tok::Word(w) => {
                self.next();
                Ok(w)
            }
            _ => Err(self.error("expected a value")),
        }
    }

    fn list(&mut self) -> Result<Vec<String>, PlacementError> {
        if self.peek() != &Tok::LBracket {
            return Err(self.error("expected '[' to open a list"));
        }
        self.next();
        let mut out = vec![self.value()?];
        loop {
            match self.peek() {
                Tok::Comma => {
                    self.next();
                    out.push(self.value()?);
                }
                Tok::RBracket => {
                    self.next();
                    return Ok(out);
                }
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
    }

    fn regex(&mut self) -> Result<Regex, PlacementError> {
        let at = self.at;
        let v = self.value()?;
        Regex::new(&format!("^(?:{v})$")).map_err(|e| {
            self.at = at;
            self.error(format!("bad pattern: {e}"))
        })
    }

    fn comparison(&mut self) -> Result<Expr, PlacementError> {
        let subject = self.subject()?;
        let op_at = self.at;
        let name = match self.next() {
            Tok::Sym(s) => s.to_owned(),
            Tok::Word(w) => w.to_ascii_lowercase(),
            Tok::Bang => match self.next() {
                Tok::Word(w) if w == "in" || w == "exists" => format!("!{w}"),
                _ => {
                    self.at = op_at;
                    return Err(self.error("expected !in or !exists"));
                }
            },
            _ => {
                self.at = op_at;
                return Err(self.error("expected an operator"));
            }
        };
        let order = |o: &[Ordering]| o.to_vec();
        let op = match name.as_str() {
            "==" | "equals" => Op::Eq(self.value()?),
            "!=" | "not_equals" => Op::Ne(self.value()?),
            ">" | "greater_than" => Op::Order(order(&[Ordering::Greater]), self.value()?),
            ">=" | "greater_than_equal" => {
                Op::Order(order(&[Ordering::Greater, Ordering::Equal]), self.value()?)
            }
            "<" | "less_than" => Op::Order(order(&[Ordering::Less]), self.value()?),
            "<=" | "less_than_equal" => {
                Op::Order(order(&[Ordering::Less, Ordering::Equal]), self.value()?)
            }
            "exists" => Op::Exists,
            "!exists" | "not_exists" => Op::NotExists,
            "in" => Op::In(self.list()?),
            "!in" | "not_in" => Op::NotIn(self.list()?),
            "=~" | "matches" => Op::Matches(self.regex()?),
            "!~" | "not_matches" => Op::NotMatches(self.regex()?),
            other => {
                self.at = op_at;
                return Err(self.error(format!("unknown operator {other:?}")));
            }
        };
        Ok(Expr::Cmp(subject, op))
    }
}

/// Compares as numbers, else as dotted versions, else as text.
fn compare(a: &str, b: &str) -> Ordering {
    if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        return x.partial_cmp(&y).unwrap_or(Ordering::Equal);
    }
    let dotted = |s: &str| -> Option<Vec<u64>> { s.split('.').map(|p| p.parse().ok()).collect() };
    match (dotted(a), dotted(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

impl Expr {
    /// Parses an expression; errors name the byte offset.
    pub fn parse(text: &str) -> Result<Self, PlacementError> {
        let toks = lex(text).map_err(|(position, message)| PlacementError::Syntax {
            expression: text.to_owned(),
            position,
            message,
        })?;
        let mut p = Parser { text, toks, at: 0 };
        let e = p.or()?;
        if p.peek() != &Tok::End {
            return Err(p.error("expected and, or, or the end"));
        }
        Ok(e)
    }

    /// Whether the expression selects `c`.
    pub fn eval(&self, c: &Candidate) -> bool {
        match self {
            Self::And(a, b) => a.eval(c) && b.eval(c),
            Self::Or(a, b) => a.eval(c) || b.eval(c),
            Self::Not(a) => !a.eval(c),
            Self::Cmp(subject, op) => {
                let values: Vec<String> = match subject {
                    Subject::Attribute(a) => match c.attributes.get(a) {
                        Some(v) => vec![v.clone().unwrap_or_default()],
                        None => Vec::new(),
                    },
                    Subject::Ec2InstanceId => vec![c.ec2_instance_id.clone()],
                    Subject::AgentConnected => vec![c.agent_connected.to_string()],
                    Subject::AgentVersion => vec![c.agent_version.clone()],
                    Subject::RunningTasksCount => vec![c.groups.values().sum::<i64>().to_string()],
                    Subject::TaskGroup => c.groups.keys().cloned().collect(),
                };
                let any = |f: &dyn Fn(&str) -> bool| values.iter().any(|v| f(v));
                match op {
                    Op::Eq(x) => any(&|v| v == x),
                    Op::Ne(x) => !any(&|v| v == x),
                    Op::Order(ok, x) => any(&|v| ok.contains(&compare(v, x))),
                    Op::Exists => !values.is_empty(),
                    Op::NotExists => values.is_empty(),
                    Op::In(xs) => any(&|v| xs.iter().any(|x| x == v)),
                    Op::NotIn(xs) => !any(&|v| xs.iter().any(|x| x == v)),
                    Op::Matches(r) => any(&|v| r.is_match(v)),
                    Op::NotMatches(r) => !any(&|v| r.is_match(v)),
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "placement_tests.rs"]
mod tests;
