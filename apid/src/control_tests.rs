//! The control actions over a real store (SQLite and PostgreSQL), and once through the HTTP
//! adapter with a request signed by `skiff_runtime::sigv4`, as `skiff control` signs it.

use std::time::SystemTime;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use skiff_runtime::sigv4::{Credentials, Signer};
use tower::ServiceExt;

use super::*;
use crate::config::ApidConfig;
use crate::store::Store;
use crate::store::testing::both_stores;

const ME: &str = "AKIACALLER";

async fn ctl(api: &Api, action: &str, body: Value) -> Result<Value, ApiError> {
    call(api, ME, action, body.to_string().as_bytes()).await
}

async fn cluster(api: &Api, name: &str) {
    api.call(
        "CreateCluster",
        json!({ "clusterName": name }).to_string().as_bytes(),
    )
    .await
    .unwrap();
}

/// Whether an error is of the expected variant.
type Kind = fn(&ApiError) -> bool;

fn assert_err(result: Result<Value, ApiError>, kind: Kind, message: &str) {
    let e = result.unwrap_err();
    assert!(kind(&e), "{e:?}");
    assert!(e.to_string().contains(message), "{e} lacks {message:?}");
}

async fn activations_are_created_listed_and_deleted(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    assert_err(
        ctl(&api, "CreateActivation", json!({"cluster": "edge"})).await,
        |e| matches!(e, ApiError::NotFound(_)),
        "cluster edge not found",
    );
    cluster(&api, "edge").await;
    let refusals: [(Value, Kind, &str); 3] = [
        (
            json!({"cluster": "edge", "count": 0}),
            |e| matches!(e, ApiError::InvalidParameter(_)),
            "count 0",
        ),
        (
            json!({"cluster": "edge", "expiresInSeconds": 0}),
            |e| matches!(e, ApiError::InvalidParameter(_)),
            "expiresInSeconds 0",
        ),
        (
            json!({"cluster": "edge", "cuont": 2}),
            |e| matches!(e, ApiError::Serialization(_)),
            "cuont",
        ),
    ];
    for (body, kind, message) in refusals {
        assert_err(ctl(&api, "CreateActivation", body).await, kind, message);
    }
    let a = ctl(
        &api,
        "CreateActivation",
        json!({"cluster": "edge", "count": 3, "expiresInSeconds": 600}),
    )
    .await
    .unwrap();
    let id = a["activationId"].as_str().unwrap().to_owned();
    assert_eq!(a["activationCode"].as_str().unwrap().len(), 32);
    let l = ctl(&api, "ListActivations", json!({})).await.unwrap();
    assert_eq!(l["activations"][0]["activationId"], id.as_str());
    assert_eq!(l["activations"][0]["cluster"], "edge");
    assert_eq!(l["activations"][0]["remaining"], 3);
    assert_eq!(l["activations"][0]["expired"], false);
    assert!(l["activations"][0].get("activationCode").is_none());
    ctl(&api, "DeleteActivation", json!({ "activationId": id }))
        .await
        .unwrap();
    assert_err(
        ctl(&api, "DeleteActivation", json!({ "activationId": id })).await,
        |e| matches!(e, ApiError::NotFound(_)),
        &format!("activation {id} not found"),
    );
    let l = ctl(&api, "ListActivations", json!({})).await.unwrap();
    assert_eq!(l["activations"], json!([]));
}

async fn keys_are_created_listed_and_revoked_but_not_by_themselves(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let k = ctl(&api, "CreateAccessKey", json!({})).await.unwrap();
    let id = k["accessKey"]["accessKeyId"].as_str().unwrap().to_owned();
    assert!(id.starts_with("AKIA"), "{id}");
    assert_eq!(
        k["accessKey"]["secretAccessKey"].as_str().unwrap().len(),
        40
    );
    let l = ctl(&api, "ListAccessKeys", json!({})).await.unwrap();
    assert_eq!(
        l["accessKeys"],
        json!([{"accessKeyId": id, "status": "Active"}])
    );
    // The key signing the request cannot revoke itself.
    let own = call(
        &api,
        &id,
        "RevokeAccessKey",
        json!({ "accessKeyId": id }).to_string().as_bytes(),
    )
    .await;
    assert_err(
        own,
        |e| matches!(e, ApiError::InvalidParameter(_)),
        "cannot revoke itself",
    );
    ctl(&api, "RevokeAccessKey", json!({ "accessKeyId": id }))
        .await
        .unwrap();
    assert!(keys::secret(api.pool(), &id).await.unwrap().is_none());
    assert_err(
        ctl(&api, "RevokeAccessKey", json!({ "accessKeyId": id })).await,
        |e| matches!(e, ApiError::NotFound(_)),
        &format!("no active access key {id}"),
    );
    let l = ctl(&api, "ListAccessKeys", json!({})).await.unwrap();
    assert_eq!(l["accessKeys"][0]["status"], "Revoked");
}

async fn the_ca_certificate_is_stable(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let a = ctl(&api, "GetCaCertificate", json!({})).await.unwrap();
    let pem = a["certificate"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let b = ctl(&api, "GetCaCertificate", json!({})).await.unwrap();
    assert_eq!(a, b);
}

async fn node_certificates_are_listed_and_revoked(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    for (serial, instance, issued) in [("aa01", "i1", 10.0), ("bb02", "i2", 20.0)] {
        sqlx::query(
            "INSERT INTO node_certs (serial, instance, issued_at, not_after) VALUES ($1, $2, $3, $4)",
        )
        .bind(serial)
        .bind(instance)
        .bind(issued)
        .bind(4e9)
        .execute(api.pool())
        .await
        .unwrap();
    }
    let l = ctl(&api, "ListNodeCertificates", json!({})).await.unwrap();
    let serials: Vec<_> = l["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials, ["aa01", "bb02"]);
    let arn = "arn:aws:ecs:us-east-1:000000000000:container-instance/edge/i2";
    let l = ctl(
        &api,
        "ListNodeCertificates",
        json!({ "containerInstance": arn }),
    )
    .await
    .unwrap();
    assert_eq!(
        l["certificates"],
        json!([{"serial": "bb02", "containerInstance": "i2", "issuedAt": 20.0,
                "notAfter": 4e9, "revokedAt": null}])
    );
    ctl(&api, "RevokeNodeCertificate", json!({"serial": "BB02"}))
        .await
        .unwrap();
    let l = ctl(
        &api,
        "ListNodeCertificates",
        json!({"containerInstance": "i2"}),
    )
    .await
    .unwrap();
    assert!(l["certificates"][0]["revokedAt"].as_f64().unwrap() > 0.0);
    assert_err(
        ctl(&api, "RevokeNodeCertificate", json!({"serial": "bb02"})).await,
        |e| matches!(e, ApiError::InvalidParameter(_)),
        "node certificate bb02 is already revoked",
    );
    assert_err(
        ctl(&api, "RevokeNodeCertificate", json!({"serial": "cc03"})).await,
        |e| matches!(e, ApiError::NotFound(_)),
        "no node certificate with serial cc03",
    );
    assert_err(
        ctl(&api, "RevokeNodeCertificate", json!({})).await,
        |e| matches!(e, ApiError::Serialization(_)),
        "serial",
    );
}

async fn unknown_actions_are_named(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    assert_err(
        ctl(&api, "ListClusters", json!({})).await,
        |e| matches!(e, ApiError::UnknownOperation(_)),
        "SkiffControlV1.ListClusters is not an action",
    );
}

/// A `POST /` to `router` signed by `key` for target `target`: status and JSON body.
async fn signed(
    api: &Api,
    key: &keys::AccessKey,
    target: &str,
    body: Value,
) -> (StatusCode, Value) {
    let signer = Signer {
        credentials: Credentials {
            access_key_id: key.access_key_id.clone(),
            secret_access_key: key.secret_access_key.clone(),
        },
        region: api.config().region.clone(),
        service: crate::protocol::SERVICE.to_owned(),
    };
    let body = body.to_string().into_bytes();
    let (mut parts, ()) = Request::post("/")
        .header("host", "127.0.0.1:8460")
        .header("content-type", crate::protocol::CONTENT_TYPE)
        .header("x-amz-target", target)
        .body(())
        .unwrap()
        .into_parts();
    signer.sign(&mut parts, &body, SystemTime::now()).unwrap();
    let resp = crate::protocol::router(api.clone())
        .oneshot(Request::from_parts(parts, Body::from(body)))
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn the_control_prefix_is_served_with_the_same_keys(store: Store) {
    let api = Api::new(store, ApidConfig::default());
    let key = keys::create(api.pool()).await.unwrap();
    let (status, body) = signed(&api, &key, "SkiffControlV1.ListAccessKeys", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["accessKeys"][0]["accessKeyId"],
        key.access_key_id.as_str()
    );
    let (status, body) = signed(
        &api,
        &key,
        "SkiffControlV1.RevokeAccessKey",
        json!({ "accessKeyId": key.access_key_id }),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["__type"], "InvalidParameterException");
    // The ECS prefix still reaches the ECS actions; anything else is named.
    let (status, body) = signed(
        &api,
        &key,
        "AmazonEC2ContainerServiceV20141113.ListClusters",
        json!({}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = signed(&api, &key, "Nope.ListClusters", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["__type"], "UnknownOperationException");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("SkiffControlV1."),
        "{body}"
    );
}

both_stores!(
    activations_are_created_listed_and_deleted,
    keys_are_created_listed_and_revoked_but_not_by_themselves,
    the_ca_certificate_is_stable,
    node_certificates_are_listed_and_revoked,
    unknown_actions_are_named,
    the_control_prefix_is_served_with_the_same_keys,
);
