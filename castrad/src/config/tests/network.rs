//! `[project] network`: its default, the addresses it gives, and its errors.

use super::*;

fn two_qemu_and_an_external(network: &str) -> String {
    format!(
        "[project]\nname = \"demo\"\n{network}\n[[vms]]\nname = \"web\"\nreplicas = 2\n\
         base_image = \"img.qcow2\"\n\n[[vms]]\nname = \"ext\"\nbackend = \"external\"\n\n\
         [vms.ssh]\nhost = \"10.0.0.9\"\n\n[[vms]]\nname = \"db\"\nbase_image = \"img.qcow2\"\n"
    )
}

#[test]
fn on_by_default_with_two_qemu_vms_numbered_in_file_order() {
    let p = ok(&two_qemu_and_an_external(""));
    assert!(p.network);
    let [a, b] = crate::config::network::segment(Path::new(PATH)).subnet;
    let addresses: Vec<Option<String>> = p
        .vms
        .iter()
        .map(|vm| vm.network.as_ref().map(|n| n.address.to_string()))
        .collect();
    assert_eq!(
        addresses,
        [
            Some(format!("10.{a}.{b}.10")),
            Some(format!("10.{a}.{b}.11")),
            None,
            Some(format!("10.{a}.{b}.12")),
        ]
    );
    let names: Vec<&str> = p.vms[0]
        .network
        .as_ref()
        .unwrap()
        .hosts
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(names, ["web-0", "web-1", "db"]);
}

#[test]
fn off_when_asked_and_by_default_for_one_qemu_vm() {
    let p = ok(&two_qemu_and_an_external("network = false\n"));
    assert!(!p.network);
    assert!(p.vms.iter().all(|vm| vm.network.is_none()));
    let one = ok(head!());
    assert!(!one.network && one.vms[0].network.is_none());
    let asked = ok(concat!(
        "[project]\nname = \"demo\"\nnetwork = true\n\n",
        "[[vms]]\nname = \"web\"\nbase_image = \"img.qcow2\"\n"
    ));
    assert!(asked.network && asked.vms[0].network.is_some());
}

#[test]
fn a_network_too_big_or_not_a_boolean_is_a_located_error() {
    assert_parse_error(
        concat!(
            "[project]\nname = \"demo\"\nnetwork = true\n\n",
            "[[vms]]\nname = \"web\"\nreplicas = 241\nbase_image = \"img.qcow2\"\n"
        ),
        "project.network",
        "at most 240 QEMU VMs, this project has 241",
        3,
        11,
    );
    // Not asked for: a fleet that big simply has none.
    let big = ok(concat!(
        "[project]\nname = \"demo\"\n\n",
        "[[vms]]\nname = \"web\"\nreplicas = 241\nbase_image = \"img.qcow2\"\n"
    ));
    assert!(!big.network);
    let e = err("[project]\nname = \"demo\"\nnetwork = \"yes\"\n").to_string();
    assert!(e.starts_with("/p/castra.toml:3:11: "), "{e}");
    assert!(e.contains("project.network"), "{e}");
}
