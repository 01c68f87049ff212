//! `sidekey inject`: adds sidekey to Kubernetes workloads the way `linkerd inject` does.
//!
//! Reads a YAML stream (several documents allowed), finds the pod template of each
//! Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob or Pod, and adds: sidekey as a
//! native sidecar (first init container, `restartPolicy: Always`), the Secret (whole volume,
//! mode 0400) and ConfigMap volumes, probes and a locked-down securityContext as in
//! `deploy/kubernetes/base`, and `<ENV>=http://127.0.0.1:8080` on the app containers. Every
//! other field is left as it was. Injecting twice changes nothing; an existing `sidekey`
//! container or volume with a different spec is refused rather than overwritten.

use serde_yaml_ng::{Mapping, Value};

/// What to inject.
#[derive(Clone, Debug)]
pub struct InjectOptions {
    pub secret: String,
    pub config_map: String,
    pub image: String,
    /// Env var that points the app at sidekey, e.g. `BANATA_BASE_URL`.
    pub env_name: String,
    pub listen_url: String,
}

/// Why a stream could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {doc}: not valid YAML: {source}")]
    Yaml {
        doc: usize,
        source: serde_yaml_ng::Error,
    },
    #[error(
        "document {doc} ({kind} {name}): {what} `{item}` already exists with a different spec; remove it or inject with matching flags"
    )]
    Conflict {
        doc: usize,
        kind: String,
        name: String,
        what: &'static str,
        item: String,
    },
    #[error("cannot write YAML: {0}")]
    Write(serde_yaml_ng::Error),
}

const SIDECAR: &str = "sidekey";
const SECRET_VOLUME: &str = "sidekey-credential";
const CONFIG_VOLUME: &str = "sidekey-config";

/// Injects every workload in `input`; returns the new stream.
pub fn inject(input: &str, opts: &InjectOptions) -> Result<String, InjectError> {
    let mut out = Vec::new();
    for (doc, de) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let mut value: Value = serde::Deserialize::deserialize(de)
            .map_err(|source| InjectError::Yaml { doc, source })?;
        if value.is_null() {
            continue;
        }
        let kind = value["kind"].as_str().unwrap_or_default().to_owned();
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let conflict = |what, item: &str| InjectError::Conflict {
            doc,
            kind: kind.clone(),
            name: name.clone(),
            what,
            item: item.to_owned(),
        };
        if let Some(pod) = pod_spec(&mut value, &kind) {
            inject_pod(pod, opts).map_err(|(what, item)| conflict(what, &item))?;
        }
        out.push(serde_yaml_ng::to_string(&value).map_err(InjectError::Write)?);
    }
    Ok(out.join("---\n"))
}

/// The pod spec inside a workload, if this kind has one.
fn pod_spec<'a>(v: &'a mut Value, kind: &str) -> Option<&'a mut Mapping> {
    let spec = match kind {
        "Pod" => v.get_mut("spec")?,
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            v.get_mut("spec")?.get_mut("template")?.get_mut("spec")?
        }
        "CronJob" => v
            .get_mut("spec")?
            .get_mut("jobTemplate")?
            .get_mut("spec")?
            .get_mut("template")?
            .get_mut("spec")?,
        _ => return None,
    };
    spec.as_mapping_mut()
}

type Conflict = (&'static str, String);

fn inject_pod(pod: &mut Mapping, opts: &InjectOptions) -> Result<(), Conflict> {
    // Volumes first, then the sidecar, then the app env: a conflict anywhere leaves the
    // document unwritten (the caller fails the whole stream).
    if let Some(volumes) = seq(pod, "volumes") {
        ensure_named(volumes, SECRET_VOLUME, secret_volume(opts), "volume")?;
        ensure_named(volumes, CONFIG_VOLUME, config_volume(opts), "volume")?;
    }
    let Some(init) = seq(pod, "initContainers") else {
        return Ok(());
    };
    match init
        .iter()
        .position(|c| c["name"].as_str() == Some(SIDECAR))
    {
        Some(i) if init.get(i) == Some(&sidecar(opts)) => {}
        Some(_) => return Err(("container", SIDECAR.to_owned())),
        // First, so it is ready before any other init container or app container runs.
        None => init.insert(0, sidecar(opts)),
    }
    for container in seq(pod, "containers").into_iter().flatten() {
        let Some(c) = container.as_mapping_mut() else {
            continue;
        };
        let Some(env) = seq(c, "env") else { continue };
        let present = env
            .iter()
            .any(|e| e["name"].as_str() == Some(opts.env_name.as_str()));
        if !present {
            env.push(yaml(&format!(
                "{{name: {}, value: \"{}\"}}",
                opts.env_name, opts.listen_url
            )));
        }
    }
    Ok(())
}

/// The sequence at `key`, created empty if absent (or replaced if not a sequence).
fn seq<'a>(m: &'a mut Mapping, key: &str) -> Option<&'a mut Vec<Value>> {
    let entry = m.entry(Value::from(key)).or_insert(Value::Null);
    if !entry.is_sequence() {
        *entry = Value::Sequence(Vec::new());
    }
    entry.as_sequence_mut()
}

fn ensure_named(
    list: &mut Vec<Value>,
    name: &str,
    want: Value,
    what: &'static str,
) -> Result<(), Conflict> {
    match list.iter().find(|v| v["name"].as_str() == Some(name)) {
        Some(existing) if *existing == want => Ok(()),
        Some(_) => Err((what, name.to_owned())),
        None => {
            list.push(want);
            Ok(())
        }
    }
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or(Value::Null)
}

fn secret_volume(opts: &InjectOptions) -> Value {
    yaml(&format!(
        "{{name: {SECRET_VOLUME}, secret: {{secretName: {}, defaultMode: 256}}}}",
        opts.secret
    ))
}

fn config_volume(opts: &InjectOptions) -> Value {
    yaml(&format!(
        "{{name: {CONFIG_VOLUME}, configMap: {{name: {}}}}}",
        opts.config_map
    ))
}

/// The sidecar, as in `deploy/kubernetes/base/deployment.yaml`.
fn sidecar(opts: &InjectOptions) -> Value {
    yaml(&format!(
        r#"
name: {SIDECAR}
image: {image}
restartPolicy: Always
args: ["run", "--config", "/etc/sidekey/sidekey.toml"]
ports:
  - {{name: sidekey-admin, containerPort: 9901}}
startupProbe:
  httpGet: {{path: /readyz, port: 9901}}
  periodSeconds: 1
  failureThreshold: 60
readinessProbe:
  httpGet: {{path: /readyz, port: 9901}}
  periodSeconds: 5
livenessProbe:
  httpGet: {{path: /healthz, port: 9901}}
  periodSeconds: 10
resources:
  requests: {{cpu: 50m, memory: 32Mi}}
  limits: {{cpu: 500m, memory: 64Mi}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {{drop: ["ALL"]}}
  seccompProfile: {{type: RuntimeDefault}}
volumeMounts:
  - {{name: {SECRET_VOLUME}, mountPath: /var/run/secrets/banata, readOnly: true}}
  - {{name: {CONFIG_VOLUME}, mountPath: /etc/sidekey, readOnly: true}}
"#,
        image = opts.image
    ))
}

#[cfg(test)]
mod tests;
