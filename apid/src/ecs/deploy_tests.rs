//! The scheduler's decisions on hand-made snapshots.

use super::*;

fn spec(desired: i64, max: i64, min: i64) -> Spec {
    Spec {
        scheduling: Scheduling::Replica,
        desired,
        maximum_percent: max,
        minimum_healthy_percent: min,
        circuit_breaker: (true, true),
        deleting: false,
    }
}

fn dep(id: &str, primary: bool) -> Deployment {
    Deployment {
        id: id.into(),
        primary,
        rollout: Rollout::InProgress,
        failed: 0,
    }
}

fn task(id: &str, deployment: &str, running: bool) -> Task {
    Task {
        id: id.into(),
        deployment: deployment.into(),
        instance: format!("i-{id}"),
        running,
        unhealthy: false,
        host: Host::Active,
    }
}

fn stopped(p: &Plan) -> Vec<(&str, &str)> {
    p.stop.iter().map(|s| (s.task.as_str(), s.reason)).collect()
}

#[test]
fn a_new_service_starts_its_count_and_is_steady_once_running() {
    let p = plan(&spec(4, 200, 100), &[dep("d1", true)], &[], &[]);
    assert_eq!((p.start, p.steady), (4, false));
    let ts: Vec<Task> = (0..4).map(|i| task(&i.to_string(), "d1", true)).collect();
    let p = plan(&spec(4, 200, 100), &[dep("d1", true)], &ts, &[]);
    assert_eq!((p.start, p.stop.len(), p.steady), (0, 0, true));
    assert_eq!(p.rollouts, [("d1".to_owned(), Rollout::Completed)]);
}

#[test]
fn a_rolling_update_keeps_minimum_healthy_and_maximum_percent() {
    let deps = [dep("new", true), dep("old", false)];
    let old: Vec<Task> = (0..4)
        .map(|i| task(&format!("o{i}"), "old", true))
        .collect();
    // 100% healthy, 150% max: 2 new start; no old one may stop yet.
    let p = plan(&spec(4, 150, 100), &deps, &old, &[]);
    assert_eq!((p.start, p.stop.len()), (2, 0));
    // The two new ones run: two old ones may go, no new start (6 live of 6).
    let mut ts = old.clone();
    ts.extend((0..2).map(|i| task(&format!("n{i}"), "new", true)));
    let p = plan(&spec(4, 150, 100), &deps, &ts, &[]);
    assert_eq!(p.start, 0);
    assert_eq!(p.stop.len(), 2);
    assert!(
        p.stop
            .iter()
            .all(|s| s.reason == REPLACED && s.task.starts_with('o'))
    );
    // 50% minimum healthy, 100% maximum: two old stop first, nothing starts until they are gone.
    let p = plan(&spec(4, 100, 50), &deps, &old, &[]);
    assert_eq!((p.start, p.stop.len()), (0, 2));
    // Pending old tasks go first, whatever the bounds.
    let mut ts = old.clone();
    ts[3].running = false;
    let p = plan(&spec(4, 100, 100), &deps, &ts, &[]);
    assert_eq!(stopped(&p), [("o3", REPLACED)]);
    // The old deployment has nothing left: retired, and the new one steady.
    let ts: Vec<Task> = (0..4)
        .map(|i| task(&format!("n{i}"), "new", true))
        .collect();
    let p = plan(&spec(4, 200, 100), &deps, &ts, &[]);
    assert_eq!(p.retire, ["old"]);
    assert!(p.steady);
}

#[test]
fn unhealthy_lost_and_draining_tasks_are_replaced() {
    let d = [dep("d", true)];
    let mut ts: Vec<Task> = (0..3).map(|i| task(&i.to_string(), "d", true)).collect();
    ts[0].unhealthy = true;
    ts[1].host = Host::Lost;
    ts[2].host = Host::Draining;
    let p = plan(&spec(3, 200, 100), &d, &ts, &[]);
    assert_eq!(p.start, 3, "a replacement for each");
    assert_eq!(stopped(&p)[..2], [("0", UNHEALTHY), ("1", LOST)]);
    assert_eq!(
        p.stop.len(),
        2,
        "the draining one serves until its replacement runs"
    );
    // A task of an instance away within the grace period counts as it was.
    ts[1].host = Host::Away;
    ts[0].unhealthy = false;
    ts[2].host = Host::Active;
    let p = plan(&spec(3, 200, 100), &d, &ts, &[]);
    assert_eq!((p.start, p.stop.len()), (0, 0));
}

#[test]
fn scaling_in_stops_pending_tasks_first() {
    let mut ts: Vec<Task> = (0..4).map(|i| task(&i.to_string(), "d", true)).collect();
    ts[2].running = false;
    let p = plan(&spec(2, 200, 100), &[dep("d", true)], &ts, &[]);
    assert_eq!(stopped(&p)[0], ("2", SCALED_IN));
    assert_eq!(p.stop.len(), 2);
}

#[test]
fn the_circuit_breaker_trips_and_rolls_back() {
    assert_eq!(failure_threshold(1), 3);
    assert_eq!(failure_threshold(10), 5);
    assert_eq!(failure_threshold(1000), 200);
    let mut d = dep("bad", true);
    d.failed = 3;
    let p = plan(
        &spec(2, 200, 100),
        &[d.clone(), dep("good", false)],
        &[],
        &[],
    );
    assert_eq!(p.rollouts, [("bad".to_owned(), Rollout::Failed)]);
    assert!(p.roll_back);
    assert_eq!(p.start, 0, "a failed deployment starts nothing more");
    // Without rollback it stays failed; a failed rollout does not trip again.
    let mut s = spec(2, 200, 100);
    s.circuit_breaker = (true, false);
    assert!(!plan(&s, &[d.clone()], &[], &[]).roll_back);
    d.rollout = Rollout::Failed;
    assert!(plan(&spec(2, 200, 100), &[d], &[], &[]).rollouts.is_empty());
    assert_eq!(Rollout::Completed.next(RolloutEvent::Tripped), None);
}

#[test]
fn a_daemon_runs_one_task_per_eligible_instance() {
    let mut s = spec(0, 100, 0);
    s.scheduling = Scheduling::Daemon;
    let eligible = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
    let mut on_a = task("1", "new", true);
    on_a.instance = "a".into();
    let mut old_on_b = task("2", "old", true);
    old_on_b.instance = "b".into();
    let mut on_gone = task("3", "new", true);
    on_gone.instance = "z".into();
    let p = plan(
        &s,
        &[dep("new", true), dep("old", false)],
        &[on_a, old_on_b, on_gone],
        &eligible,
    );
    assert_eq!(
        p.start_on,
        ["c"],
        "b gets its task once the old one is gone"
    );
    assert_eq!(stopped(&p), [("2", REPLACED), ("3", SCALED_IN)]);
}

#[test]
fn a_deleted_service_stops_everything() {
    let mut s = spec(3, 200, 100);
    s.deleting = true;
    let ts = [task("1", "d", true), task("2", "d", false)];
    let p = plan(&s, &[dep("d", true)], &ts, &[]);
    assert_eq!(stopped(&p), [("1", DELETED), ("2", DELETED)]);
    assert_eq!((p.start, p.retire.len()), (0, 1));
}
