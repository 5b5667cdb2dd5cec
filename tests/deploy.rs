//! The deployment files (`deploy/k8s/*.yaml`, `deploy/docker-compose.yml`) hold what the binaries
//! rely on: ports, state paths, the job file, one distinct shard per client, the image names and
//! users that `deploy/build-images.sh` makes.

use shoal_coordinator::spec::CheckedSpec;
use yaml_rust2::{Yaml, YamlLoader};

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn docs(path: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn of_kind<'a>(docs: &'a [Yaml], kind: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

fn strs(y: &Yaml) -> Vec<&str> {
    list(y).iter().filter_map(Yaml::as_str).collect()
}

fn env<'a>(container: &'a Yaml, name: &str) -> &'a Yaml {
    list(&container["env"])
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no env {name}"))
}

/// The value after `flag` in an argument list.
fn arg<'a>(args: &[&'a str], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args[i + 1]
}

#[test]
fn kubernetes_manifests_carry_what_the_coordinator_and_clients_rely_on() {
    let coord = docs("deploy/k8s/coordinator.yaml");
    let clients = docs("deploy/k8s/clients.yaml");
    for d in coord.iter().chain(&clients) {
        assert!(d["apiVersion"].as_str().is_some() && d["metadata"]["name"].as_str().is_some());
    }
    let (sts, svc, cm) = (
        of_kind(&coord, "StatefulSet"),
        of_kind(&coord, "Service"),
        of_kind(&coord, "ConfigMap"),
    );
    let pod = &sts["spec"]["template"];
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["image"].as_str(), Some("shoal-coordinator:local"));
    assert_eq!(
        pod["spec"]["securityContext"]["runAsUser"].as_i64(),
        Some(10001)
    );

    // State on the claim: SQLite and run folders under the PVC's mount.
    let claim = sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
        .as_str()
        .unwrap();
    let mount_of = |volume: &str| {
        list(&c["volumeMounts"])
            .iter()
            .find(|m| m["name"].as_str() == Some(volume))
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("volume {volume} is not mounted"))
    };
    let state = mount_of(claim);
    for var in ["SHOAL_STATE_DIR", "SHOAL_OUT"] {
        let v = env(c, var)["value"].as_str().unwrap();
        assert!(
            v.starts_with(state),
            "{var} = {v} is not on the volume at {state}"
        );
    }

    // The job file the coordinator submits is the ConfigMap's, and is a valid spec.
    let args = strs(&c["args"]);
    assert_eq!(args[0], "serve");
    let job_volume = list(&pod["spec"]["volumes"])
        .iter()
        .find(|v| v["configMap"]["name"].as_str() == cm["metadata"]["name"].as_str())
        .expect("the job ConfigMap is a volume");
    let job_path = arg(&args, "--job");
    let mount = mount_of(job_volume["name"].as_str().unwrap());
    let key = job_path
        .strip_prefix(&format!("{mount}/"))
        .expect("--job lies in the ConfigMap mount");
    let spec = CheckedSpec::from_toml(cm["data"][key].as_str().expect("the --job key")).unwrap();

    // The listening port is the container port the Service targets, and probes check it.
    let listen = env(c, "SHOAL_LISTEN")["value"].as_str().unwrap();
    let port: i64 = listen.rsplit(':').next().unwrap().parse().unwrap();
    let container_port = &list(&c["ports"])[0];
    assert_eq!(container_port["containerPort"].as_i64(), Some(port));
    assert_eq!(
        svc["spec"]["ports"][0]["targetPort"].as_str(),
        container_port["name"].as_str()
    );
    assert_eq!(c["readinessProbe"]["grpc"]["port"].as_i64(), Some(port));
    let labels = pod["metadata"]["labels"].as_hash().unwrap();
    for (k, v) in svc["spec"]["selector"].as_hash().unwrap() {
        assert_eq!(
            labels.get(k),
            Some(v),
            "the Service selects the coordinator pod"
        );
    }

    // Clients: an indexed Job, one distinct shard per index, pointed at the Service.
    let job = of_kind(&clients, "Job");
    assert_eq!(job["spec"]["completionMode"].as_str(), Some("Indexed"));
    let n = job["spec"]["completions"].as_i64().unwrap();
    assert_eq!(job["spec"]["parallelism"].as_i64(), Some(n));
    let cc = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(cc["image"].as_str(), Some("shoal-client:local"));
    let cargs = strs(&cc["args"]);
    assert_eq!(arg(&cargs, "--shard"), format!("$(SHARD_INDEX)/{n}"));
    assert!(arg(&cargs, "--name").contains("$(SHARD_INDEX)"));
    assert!(env(cc, "SHARD_INDEX")["valueFrom"]["fieldRef"]["fieldPath"]
        .as_str()
        .unwrap()
        .contains("job-completion-index"));
    let url = format!(
        "http://{}:{}",
        svc["metadata"]["name"].as_str().unwrap(),
        svc["spec"]["ports"][0]["port"].as_i64().unwrap()
    );
    assert_eq!(
        env(cc, "SHOAL_COORDINATOR")["value"].as_str(),
        Some(url.as_str())
    );
    assert_eq!(
        env(cc, "SHOAL_BUILTIN")["value"].as_str(),
        Some(spec.dataset.as_str())
    );
    assert!(i64::from(spec.clients.min_available_clients) <= n);
}

#[test]
fn the_compose_federation_gives_each_client_its_own_shard() {
    let compose = &docs("deploy/docker-compose.yml")[0];
    let services = compose["services"].as_hash().unwrap();
    let mut shards = Vec::new();
    let mut names = Vec::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if !name.starts_with("client-") {
            continue;
        }
        let args = strs(&svc["command"]);
        shards.push(arg(&args, "--shard").to_string());
        names.push(arg(&args, "--name").to_string());
    }
    let n = shards.len();
    assert!(n >= 2);
    let mut expected: Vec<String> = (0..n).map(|i| format!("{i}/{n}")).collect();
    shards.sort();
    expected.sort();
    assert_eq!(shards, expected, "one distinct shard i/N per client");
    names.sort();
    names.dedup();
    assert_eq!(names.len(), n, "distinct client names");
    let coordinator = &services[&Yaml::String("coordinator".into())];
    let args = strs(&coordinator["command"]);
    let job = arg(&args, "--job");
    let file = job.strip_prefix("/jobs/").expect("the job lies in ./jobs");
    let spec = CheckedSpec::from_toml(
        &std::fs::read_to_string(repo(&format!("deploy/jobs/{file}"))).unwrap(),
    )
    .unwrap();
    assert!(spec.clients.min_available_clients as usize <= n);
    let scenario = CheckedSpec::from_toml(
        &std::fs::read_to_string(repo("deploy/scenarios/job.toml")).unwrap(),
    )
    .unwrap();
    assert!(scenario.clients.min_available_clients as usize <= n);
}
