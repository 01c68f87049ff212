use super::*;

fn opts() -> InjectOptions {
    InjectOptions {
        secret: "banata-api-key".into(),
        config_map: "sidekey-config".into(),
        image: "sidekey:test".into(),
        env_name: "BANATA_BASE_URL".into(),
        listen_url: "http://127.0.0.1:8080".into(),
    }
}

const APP: &str = include_str!("../../../deploy/kubernetes/examples/app.yaml");

fn docs(s: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(s)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

#[test]
fn injects_workloads_and_leaves_the_rest() {
    let out = inject(APP, &opts()).unwrap();
    let d = docs(&out);
    let original = docs(APP);
    assert_eq!(d.len(), 3);
    assert_eq!(d[0], original[0], "a Service has no pod: untouched");
    let pod = &d[1]["spec"]["template"]["spec"];
    assert_eq!(pod["initContainers"][0]["name"], "sidekey");
    assert_eq!(pod["initContainers"][0]["restartPolicy"], "Always");
    assert_eq!(
        pod["initContainers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "banata-api-key");
    assert_eq!(pod["volumes"][0]["secret"]["defaultMode"], 256);
    assert!(pod["volumes"][0].get("subPath").is_none());
    let env = &pod["containers"][0]["env"];
    assert_eq!(env[0]["name"], "LOG_LEVEL");
    assert_eq!(env[1]["name"], "BANATA_BASE_URL");
    assert_eq!(env[1]["value"], "http://127.0.0.1:8080");
    assert_eq!(d[1]["metadata"]["annotations"]["team"], "analytics");
    assert_eq!(
        pod["containers"][0]["image"],
        "ghcr.io/example/reports:2.3.1"
    );
    let cron = &d[2]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(cron["initContainers"][0]["name"], "sidekey");
    assert_eq!(cron["restartPolicy"], "OnFailure");
}

#[test]
fn injecting_twice_changes_nothing() {
    let once = inject(APP, &opts()).unwrap();
    let twice = inject(&once, &opts()).unwrap();
    assert_eq!(once, twice);
}

#[test]
fn refuses_a_different_existing_sidecar_or_volume() {
    let once = inject(APP, &opts()).unwrap();
    let other = InjectOptions {
        image: "sidekey:other".into(),
        ..opts()
    };
    let e = inject(&once, &other).unwrap_err().to_string();
    assert!(
        e.contains("container `sidekey` already exists with a different spec"),
        "{e}"
    );
    let other = InjectOptions {
        secret: "another".into(),
        ..opts()
    };
    let e = inject(&once, &other).unwrap_err().to_string();
    assert!(e.contains("volume `sidekey-credential`"), "{e}");
}

#[test]
fn pods_and_bad_yaml() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a, image: x}]\n";
    let d = docs(&inject(pod, &opts()).unwrap());
    assert_eq!(d[0]["spec"]["initContainers"][0]["name"], "sidekey");
    assert!(inject("kind: [unclosed", &opts()).is_err());
}
