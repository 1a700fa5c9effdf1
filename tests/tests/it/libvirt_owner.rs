//! Issue 25: one hypervisor, several castrads. Two checkouts of one project (two project
//! directories with the same project name, each with its own castrad and state directory)
//! each touch only their own domain and volumes; a domain under castrad's name with another
//! owner's metadata is refused, naming that owner, and left as it is; a base volume planted
//! under the name of an `upload = true` image is refused before any VM is backed by it.

use std::process::Command;
use std::time::Instant;

use crate::libvirt::{Libvirtd, base_volume, domain_of, libvirt_vm, project, up};
use crate::qemu::{guest, one_at_a_time};
use crate::support::Env;

#[test]
fn two_checkouts_of_one_project_touch_only_their_own_domains_issue_25() {
    let _lock = one_at_a_time();
    let t = Instant::now();
    let lv = Libvirtd::start();
    let (a, b) = (Env::new(), Env::new());
    let vm = libvirt_vm("box", &lv.uri(), "");
    let (pa, pb) = (project(&a, &vm), project(&b, &vm));
    let _daemons = (a.start_daemon(), b.start_daemon());

    let first = up(&a, &pa, &[]);
    assert_eq!(first.statuses(), ["Success"], "{}", first.stderr);
    // The same project name, another checkout: its own domain, not "already runs".
    let second = up(&b, &pb, &[]);
    assert_eq!(second.statuses(), ["Success"], "{}", second.stderr);
    let (na, nb) = (domain_of(&a, "lv", "box"), domain_of(&b, "lv", "box"));
    assert_ne!(na, nb);
    let mut both = [na.clone(), nb.clone()];
    both.sort();
    // `virsh list` gives running domains in the order they started.
    let sorted = |mut names: Vec<String>| {
        names.sort();
        names
    };
    assert_eq!(sorted(lv.domains_and_volumes().0), both);
    let meta = lv.virsh(&["metadata", &na, "https://castra.dev/xmlns/libvirt/1"]);
    assert!(
        meta.contains(&format!(
            "<state_root>{}</state_root>",
            a.project_state().display()
        )) && meta.contains("<user>root</user>"),
        "the owner in the metadata: {meta}"
    );

    // B discards its VM: A's domain runs on, its disk stays.
    let gone = b.ctl(&pb, &["down", "--discard", "--json"]).ok().json();
    assert_eq!(gone["vms"][0]["discarded"], true, "{gone}");
    assert_eq!(
        lv.domains_and_volumes(),
        (vec![na.clone()], vec![format!("{na}.qcow2")])
    );
    assert_eq!(lv.virsh(&["domstate", &na]).trim(), "running");

    // A domain under B's name with A's metadata (A's definition, renamed): B refuses to
    // define it again, adopt or discard it, and names its owner; nothing of it is touched.
    let xml = lv.virsh(&["dumpxml", "--inactive", &na]);
    let uuid = &xml[xml.find("<uuid>").unwrap()..xml.find("</uuid>").unwrap() + 7];
    let planted = xml
        .replace(uuid, "")
        .replace(&format!("<name>{na}</name>"), &format!("<name>{nb}</name>"));
    let file = b.path("planted.xml");
    std::fs::write(&file, planted).unwrap();
    lv.virsh(&["define", file.to_str().unwrap()]);
    let theirs = lv.virsh(&["dumpxml", "--inactive", &nb]);
    let owner = format!("it belongs to {}", pa.join("castra.toml").display());
    let refused = up(&b, &pb, &[]);
    assert_eq!(refused.statuses(), ["Failed"], "{}", refused.stderr);
    let said = format!("{}{}", refused.outcome, refused.stderr);
    assert!(
        said.contains(&format!("the domain {nb} on this machine")) && said.contains(&owner),
        "{said}"
    );
    assert!(said.contains("of user root on host"), "{said}");
    let discard = b.ctl(&pb, &["down", "--discard", "--json"]);
    let said = format!("{}{}", discard.stdout, discard.stderr);
    assert!(said.contains(&owner), "{said}");
    assert_eq!(
        lv.virsh(&["dumpxml", "--inactive", &nb]),
        theirs,
        "untouched"
    );
    let (domains, volumes) = lv.domains_and_volumes();
    assert_eq!(sorted(domains), both);
    assert_eq!(volumes, [format!("{na}.qcow2")], "A's disk is still there");
    assert_eq!(lv.virsh(&["domstate", &na]).trim(), "running");
    lv.virsh(&["undefine", &nb]);

    let gone = a.ctl(&pa, &["down", "--discard", "--json"]).ok().json();
    assert_eq!(gone["vms"][0]["discarded"], true, "{gone}");
    let (domains, volumes) = lv.domains_and_volumes();
    assert!(
        domains.is_empty() && volumes.is_empty(),
        "{domains:?} {volumes:?}"
    );
    eprintln!("libvirt two checkouts: {:?}", t.elapsed());
}

/// No guest boots: each `up` stops at the planted volume, before any disk is made on it.
#[test]
fn a_planted_base_volume_is_refused_before_any_vm_uses_it_issue_25() {
    let lv = Libvirtd::start();
    let env = Env::new();
    let p = project(&env, &libvirt_vm("vm", &lv.uri(), "upload = true\n"));
    let _daemon = env.start_daemon();
    let (base, file) = base_volume(&lv);
    let image = std::fs::read(guest().join("base.img")).unwrap();
    let refused = |expect: &str| {
        lv.virsh(&["pool-refresh", "castra"]);
        let before = std::fs::read(&file).unwrap();
        let out = env.ctl(&p, &["up"]);
        let said = format!("{}{}", out.stdout, out.stderr);
        assert_ne!(out.code, 0, "{said}");
        assert!(
            said.contains(&format!("the base volume {base} in pool \"castra\""))
                && said.contains("is not the image castrad uploaded")
                && said.contains(expect),
            "{expect}: {said}"
        );
        assert_eq!(
            lv.domains_and_volumes(),
            (vec![], vec![base.clone()]),
            "{expect}: no disk made on it, no domain"
        );
        assert!(std::fs::read(&file).unwrap() == before, "left as it was");
    };

    // The wrong size.
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    refused(&format!("1048576 bytes, the image has {}", image.len()));

    // A qcow2 whose backing file is another tenant's disk, padded to the image's size.
    let tenant = lv.dir.path().join("tenant-disk.img");
    std::fs::write(&tenant, vec![0u8; 1 << 20]).unwrap();
    std::fs::remove_file(&file).unwrap();
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&tenant)
        .arg(&file)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(image.len() as u64)
        .unwrap();
    refused(&format!("it has a backing file, {}", tenant.display()));

    // The right size and format, other bytes (a backdoored base).
    let mut backdoored = image.clone();
    backdoored[1 << 20] ^= 0xff;
    std::fs::write(&file, &backdoored).unwrap();
    refused("its sha256 is ");
}
