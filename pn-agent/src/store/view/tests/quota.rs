//! A host's quota of containers: its records beyond it, its newest, are
//! refused (and counted), whatever order they reach the view in; the other
//! hosts' records flow.

use super::*;
use crate::testing::model::host_id;

fn quota_of_2() -> Fixture {
    let mut f = Fixture::new();
    f.view = std::mem::take(&mut f.view).with_host_quota(2);
    f
}

#[test]
fn a_hosts_containers_beyond_its_quota_are_refused() {
    let mut f = quota_of_2();
    f.ok(&container(1, [10, 240, 0, 1], "h1"));
    f.ok(&container(2, [10, 240, 0, 2], "h1"));
    f.refused(&container(3, [10, 240, 0, 3], "h1"), Reject::Quota);
    assert_eq!(f.view.rejected.reason("quota"), 1);
    // Another host's flow; a change of a container it has is not one more.
    f.ok(&container(4, [10, 240, 0, 4], "h2"));
    let mut unhealthy = container(2, [10, 240, 0, 2], "h1");
    unhealthy.unhealthy = true;
    f.ok(&unhealthy);
    assert_eq!(f.view.containers_on(&host_id("h1")), 2);
    // One gone: room for one more.
    f.rev += 1;
    f.view
        .apply(&WatchEvent::Delete {
            key: key_of(&container(1, [10, 240, 0, 1], "h1")),
            rev: f.rev,
        })
        .unwrap();
    assert_eq!(f.view.containers_on(&host_id("h1")), 1);
    f.ok(&container(3, [10, 240, 0, 3], "h1"));
    assert_eq!(f.view.containers_on(&host_id("h1")), 2);
}

#[test]
fn in_a_listing_the_newest_beyond_the_quota_are_refused() {
    let f = quota_of_2();
    // Key order is not age: container 3 is the oldest.
    let l = listing(&[
        rec(&network(1, "10.240.0.0/24", 1), 1),
        rec(&app(1, 1), 2),
        rec(&container(1, [10, 240, 0, 1], "h1"), 5),
        rec(&container(2, [10, 240, 0, 2], "h1"), 4),
        rec(&container(3, [10, 240, 0, 3], "h1"), 3),
        rec(&container(4, [10, 240, 0, 4], "h2"), 6),
    ]);
    let v = f.view.reloaded(&l);
    let kept: Vec<u32> = v.containers.keys().map(|k| k.index).collect();
    assert_eq!(kept, [2, 3, 4]);
    assert_eq!(v.rejected.reason("quota"), 1);
    assert_eq!(v.host_quota(), 2, "kept across listings");
}
