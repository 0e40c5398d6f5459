//! Dropping a bed whose links run through impairment relays stops the relay threads and removes
//! the namespaces. Alone in its file, so that its process has no other test's relays.
#![expect(clippy::unwrap_used, reason = "test code panics with a message")]

use std::time::Duration;

use alagg_testbed::{Direction, Path, Testbed};

/// Names of this process's threads that are relay threads (`relay<link>-ab`, `relay<link>-ba`).
fn relay_threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| name.starts_with("relay"))
        .collect()
}

#[test]
fn dropping_the_bed_stops_its_relays_and_removes_its_namespaces() {
    alagg_testbed::require_root!();
    assert!(alagg_testbed::is_root(), "run as root: it makes namespaces");
    let bed = Testbed::new("pdrop", 2).unwrap();
    for link in 0..2 {
        bed.set_path(link, Direction::Both, Path::delay(Duration::from_millis(5)))
            .unwrap();
    }
    let mut running = relay_threads();
    running.sort();
    assert_eq!(
        running,
        ["relay0-ab", "relay0-ba", "relay1-ab", "relay1-ba"]
    );
    let names = [&bed.a, &bed.b, &bed.wire].map(|netns| netns.name().to_owned());
    drop(bed);
    assert_eq!(relay_threads(), Vec::<String>::new(), "relay threads left");
    let list = alagg_testbed::run("ip", &["netns", "list"]).unwrap();
    for name in &names {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} left behind:\n{list}"
        );
    }
}
