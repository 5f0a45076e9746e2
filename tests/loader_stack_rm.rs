//! `docker stack rm` followed at once by `activate`: Swarm removes the stack's network only
//! after the old tasks stopped, so the network the plan saw can vanish under the activation.
//! The activation must wait for the removal to finish and create the network again.

mod common;

use common::*;

const STACK: &str = "lstackrm";

#[test]
fn activate_right_after_docker_stack_rm() {
    let fx = StackFixture::new(STACK);
    let def = tiny_appliance_on(&fx.path("v1"), "1.0.0", "stack-rm", STACK, None);
    // `sleep` as PID 1 ignores SIGTERM: the old task takes its whole grace period to stop,
    // and the stack's network stays (being removed) until then
    let stack_file = fx.path("v1").join("recipes/tiny-stack.yml");
    let text = std::fs::read_to_string(&stack_file).unwrap().replace(
        "  app:\n",
        "  app:\n    command: [\"sleep\", \"3600\"]\n    stop_grace_period: 10s\n",
    );
    std::fs::write(&stack_file, text).unwrap();
    let bundle = build_def(&def, &fx.path("out"));
    let o = loader_json(fx.loader().arg("activate").arg(&bundle));
    assert_eq!(o["result"], "activated");

    run_ok(docker().args(["stack", "rm", STACK]));
    let nets = run_ok(docker().args([
        "network",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        &format!("label=com.docker.stack.namespace={STACK}"),
    ]));
    assert!(
        nets.contains("lstackrm_default"),
        "the network is still there while the old task stops: {nets}"
    );
    let o = loader_json(fx.loader().arg("activate").arg(&bundle));
    assert_eq!(o["result"], "activated", "{o}");
    let st = loader_json(fx.loader().arg("status"));
    assert_eq!(st["services"][0]["health"], "healthy", "{st}");
    assert_eq!(st["services"][0]["running"], 1, "{st}");
}
