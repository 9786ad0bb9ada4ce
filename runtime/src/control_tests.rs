//! The client against a fake apid on loopback (paging, batching, refusals, signing), and the
//! tables.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;

use super::*;

/// What the fake saw: (target, body) per call.
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// 250 clusters in pages of 100, 23 services in `edge`; `Boom` is refused as ECS refuses.
async fn fake(State(seen): State<Seen>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let target = headers["x-amz-target"].to_str().unwrap().to_owned();
    let auth = headers["authorization"].to_str().unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIATEST/")
            && auth.contains("/eu-west-3/ecs/"),
        "{auth}"
    );
    assert!(headers.contains_key("x-amz-date"));
    let body: Value = serde_json::from_slice(&body).unwrap();
    seen.lock().unwrap().push((target.clone(), body.clone()));
    let arn = |kind: &str, i: usize| format!("arn:aws:ecs:eu-west-3:0:{kind}/c{i:03}");
    let answer = match target.strip_prefix(ECS_PREFIX).unwrap_or(&target) {
        "ListClusters" => {
            let start: usize = body["nextToken"].as_str().map_or(0, |t| t.parse().unwrap());
            let end = (start + 100).min(250);
            let mut page =
                json!({"clusterArns": (start..end).map(|i| arn("cluster", i)).collect::<Vec<_>>()});
            if end < 250 {
                page["nextToken"] = end.to_string().into();
            }
            page
        }
        "DescribeClusters" => {
            let names = body["clusters"].as_array().unwrap();
            assert!(names.len() <= 100, "{}", names.len());
            json!({"clusters": names.iter().map(|n| json!({"clusterName": arn_name(n.as_str().unwrap())})).collect::<Vec<_>>()})
        }
        "ListServices" => {
            assert_eq!(body["cluster"], "edge");
            json!({"serviceArns": (0..23).map(|i| format!("arn:aws:ecs:eu-west-3:0:service/edge/s{i}")).collect::<Vec<_>>()})
        }
        "DescribeServices" => {
            let names = body["services"].as_array().unwrap();
            assert!(names.len() <= 10, "{}", names.len());
            json!({"services": names.iter().map(|n| json!({"serviceArn": n})).collect::<Vec<_>>()})
        }
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                json!({"__type": "com.amazonaws.ecs#ClusterNotFoundException", "message": "Cluster not found."})
                    .to_string(),
            );
        }
    };
    (StatusCode::OK, answer.to_string())
}

async fn serve() -> (ControlClient, Seen) {
    let seen = Seen::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route("/", post(fake))
        .with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (client(port, "eu-west-3"), seen)
}

/// A client of `127.0.0.1:port` signing with a test key for `region`.
fn client(port: u16, region: &str) -> ControlClient {
    let credentials = Credentials {
        access_key_id: "AKIATEST".into(),
        secret_access_key: "secret".into(),
    };
    ControlClient::new(&format!("http://127.0.0.1:{port}"), credentials, region).unwrap()
}

/// The targets called so far.
fn targets(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(t, _)| t.clone())
        .collect()
}

#[tokio::test]
async fn views_follow_next_token_and_describe_in_batches() {
    let (client, seen) = serve().await;
    let clusters = client.clusters().await.unwrap();
    assert_eq!(clusters.len(), 250);
    assert_eq!(clusters[249]["clusterName"], "c249");
    let calls = targets(&seen);
    let count = |action: &str| calls.iter().filter(|t| t.ends_with(action)).count();
    assert_eq!(count(".ListClusters"), 3);
    assert_eq!(count(".DescribeClusters"), 3);

    let services = client.services(Some("edge")).await.unwrap();
    assert_eq!(services.len(), 23);
    let calls = targets(&seen);
    assert_eq!(
        calls
            .iter()
            .filter(|t| t.ends_with(".DescribeServices"))
            .count(),
        3
    );
}

#[tokio::test]
async fn refusals_carry_the_type_and_message() {
    let (client, seen) = serve().await;
    let e = client.control("Boom", &json!({"x": 1})).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "SkiffControlV1.Boom: ClusterNotFoundException: Cluster not found."
    );
    assert!(
        matches!(e, ControlError::Refused { status: 400, .. }),
        "{e:?}"
    );
    assert_eq!(seen.lock().unwrap()[0].1, json!({"x": 1}));
}

#[tokio::test]
async fn nobody_listening_is_a_connect_error() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = client(port, "us-east-1")
        .ecs("ListClusters", &json!({}))
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");
}

#[test]
fn endpoints_are_checked() {
    assert_eq!(
        parse_endpoint("http://127.0.0.1:8460").unwrap(),
        ("127.0.0.1:8460".to_owned(), "/".to_owned())
    );
    assert_eq!(
        parse_endpoint("http://apid.example/").unwrap(),
        ("apid.example:80".to_owned(), "/".to_owned())
    );
    for (url, reason) in [
        ("https://apid:8460", "does not serve TLS"),
        ("apid:8460", "must be http://"),
        ("http://apid/?a=b", "query"),
        ("http://", "endpoint"),
    ] {
        let e = parse_endpoint(url).unwrap_err().to_string();
        assert!(e.contains(reason), "{url}: {e}");
    }
}

#[test]
fn tables_align_columns() {
    let t = Table {
        header: vec!["NAME", "STATUS", "N"],
        rows: vec![
            vec!["default".into(), "ACTIVE".into(), "1".into()],
            vec!["e".into(), "INACTIVE".into(), "12".into()],
        ],
    };
    assert_eq!(
        t.to_string(),
        "NAME     STATUS    N\n\
         default  ACTIVE    1\n\
         e        INACTIVE  12\n"
    );
}

#[test]
fn rows_are_read_from_ecs_shapes() {
    let node = json!({
        "containerInstanceArn": "arn:aws:ecs:us-east-1:0:container-instance/edge/abc",
        "status": "ACTIVE",
        "agentConnected": true,
        "registeredResources": [{"name": "CPU", "integerValue": 2048}, {"name": "MEMORY", "integerValue": 1024}],
        "remainingResources": [{"name": "CPU", "integerValue": 1024}, {"name": "MEMORY", "integerValue": 512}],
        "runningTasksCount": 1,
        "pendingTasksCount": 0,
    });
    assert_eq!(
        nodes_table(&[node]).rows,
        [[
            "edge",
            "abc",
            "ACTIVE",
            "connected",
            "1024/2048",
            "512/1024",
            "1",
            "0"
        ]]
    );
    let service = json!({
        "serviceArn": "arn:aws:ecs:us-east-1:0:service/edge/web",
        "serviceName": "web", "status": "ACTIVE", "desiredCount": 3, "runningCount": 2,
        "pendingCount": 1, "taskDefinition": "arn:aws:ecs:us-east-1:0:task-definition/web:4",
    });
    assert_eq!(
        services_table(&[service]).rows,
        [["edge", "web", "ACTIVE", "2/3", "1", "web:4"]]
    );
    let task = json!({
        "taskArn": "arn:aws:ecs:us-east-1:0:task/edge/t1",
        "lastStatus": "RUNNING", "desiredStatus": "RUNNING",
        "taskDefinitionArn": "arn:aws:ecs:us-east-1:0:task-definition/web:4",
        "containerInstanceArn": "arn:aws:ecs:us-east-1:0:container-instance/edge/abc",
        "group": "service:web", "startedAt": 1_440_938_160.5,
    });
    assert_eq!(
        tasks_table(&[task]).rows,
        [[
            "edge",
            "t1",
            "RUNNING",
            "RUNNING",
            "web:4",
            "abc",
            "service:web",
            "2015-08-30T12:36:00Z"
        ]]
    );
    let cluster = json!({"clusterName": "edge", "status": "ACTIVE",
        "registeredContainerInstancesCount": 2, "activeServicesCount": 1,
        "runningTasksCount": 3, "pendingTasksCount": 0});
    assert_eq!(
        clusters_table(&[cluster]).rows,
        [["edge", "ACTIVE", "2", "1", "3", "0"]]
    );
    let activations = json!({"activations": [{"activationId": "a1", "cluster": "edge",
        "remaining": 2, "expiresAt": 0, "expired": true}]});
    assert_eq!(
        activations_table(&activations).rows,
        [["a1", "edge", "2", "1970-01-01T00:00:00Z (expired)"]]
    );
    let created = json!({"activationId": "a1", "activationCode": "c0de"});
    assert_eq!(new_activation_table(&created).rows, [["a1", "c0de"]]);
    let created = json!({"accessKey": {"accessKeyId": "AKIA1", "secretAccessKey": "s3"}});
    assert_eq!(new_key_table(&created).rows, [["AKIA1", "s3"]]);
    let keys = json!({"accessKeys": [{"accessKeyId": "AKIA1", "status": "Active"}]});
    assert_eq!(keys_table(&keys).rows, [["AKIA1", "Active"]]);
    let certs = json!({"certificates": [{"serial": "ab", "containerInstance": "i1",
        "issuedAt": 0, "notAfter": 86400, "revokedAt": null}]});
    assert_eq!(
        certs_table(&certs).rows,
        [[
            "ab",
            "i1",
            "1970-01-01T00:00:00Z",
            "1970-01-02T00:00:00Z",
            "-"
        ]]
    );
}
