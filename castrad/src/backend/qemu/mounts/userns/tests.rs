use super::*;

const SUBGID_FILE: &str = "bob:100000:65536\n\
    # not a range\n\
    alice:165536:0\n\
    1000:231072:65536\n\
    alice:296608:65536\n";

#[test]
fn a_users_subgid_is_found_by_name_or_uid_and_a_free_range_lies_above_all() {
    // An empty range does not count; the first non-empty one does.
    assert_eq!(subgid_of(SUBGID_FILE, "alice", 1001), Some(296608));
    // newgidmap also takes a numeric owner.
    assert_eq!(subgid_of(SUBGID_FILE, "carol", 1000), Some(231072));
    assert_eq!(subgid_of(SUBGID_FILE, "dave", 1002), None);
    assert_eq!(subgid_of("", "dave", 1002), None);
    // Above every range, counted from Debian's first subordinate id.
    assert_eq!(free_range(SUBGID_FILE), (362144, 362144 + 65535));
    assert_eq!(free_range(""), (100000, 165535));
}

#[test]
fn the_prelude_asks_unshare_for_newgidmaps_group_map_only_when_there_is_one() {
    assert_eq!(
        UserNs::Plain.prelude(),
        [
            "unshare",
            "--user",
            "--map-current-user",
            "--keep-caps",
            "--mount",
            "--propagation",
            "private"
        ]
    );
    assert_eq!(
        UserNs::Newgidmap {
            subgid: 100000,
            inner: 1
        }
        .prelude()[..4],
        [
            "unshare",
            "--user",
            "--map-current-user",
            "--map-groups=100000,1,1"
        ]
    );
}

#[test]
fn what_is_missing_comes_with_its_fix() {
    let missing = NoNewgidmap::Missing(vec![
        Missing::PrimaryGroup {
            user: "alice".into(),
            gid: 100,
            primary: 1000,
        },
        Missing::Subgid {
            user: "alice".into(),
            uid: 1000,
            free: (100000, 165535),
        },
    ]);
    assert_eq!(
        missing.to_string(),
        "castrad's gid 100 is not alice's primary group 1000, which newgidmap requires, and \
         /etc/subgid has no range for alice (uid 1000)"
    );
    assert_eq!(
        missing.fix(),
        "run castrad with alice's primary group 1000 as its group (a systemd user service \
         does); give alice subordinate group ids: sudo usermod --add-subgids 100000-165535 \
         alice (a range no other user has), then restart castrad"
    );
    let nobody = NoNewgidmap::Missing(vec![Missing::Newgidmap, Missing::User { uid: 4242 }]);
    // The package as this machine's distribution names it (crate::distro's tests have the
    // table).
    let install = crate::distro::install(&[crate::distro::Package::Uidmap]);
    assert!(
        nobody
            .fix()
            .starts_with(&format!("install it: {install}; ")),
        "{}",
        nobody.fix()
    );
    assert!(nobody.fix().contains("getent passwd 4242"));

    // Groups: the fix is newgidmap's; anything else is about user namespaces themselves.
    let groups = NoUserNs {
        plain: "setgroups() failed with error=1:Operation not permitted".into(),
        newgidmap: missing.clone(),
    };
    assert!(groups.groups());
    assert_eq!(groups.fix(), missing.fix());
    assert!(
        groups.to_string().ends_with(
            "only when newgidmap writes its group map, but castrad's gid 100 is not \
                        alice's primary group 1000, which newgidmap requires, and /etc/subgid \
                        has no range for alice (uid 1000)"
        ),
        "{groups}"
    );
    let failed = NoNewgidmap::Failed {
        subgid: 100000,
        inner: 0,
        why: "newgidmap: gid range [0-1) -> [100000-100001) not allowed".into(),
    };
    assert!(
        failed
            .fix()
            .contains("unshare --user --map-current-user --map-groups=100000,0,1 id")
    );
    let off = NoUserNs {
        plain: "unshare: unshare failed: Operation not permitted".into(),
        newgidmap: failed,
    };
    assert!(!off.groups());
    assert!(
        off.fix().contains("user.max_user_namespaces"),
        "{}",
        off.fix()
    );
}
