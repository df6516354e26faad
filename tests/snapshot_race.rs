//! The walks over folders the sandbox controls against a tree that changes under them: folders
//! swapped for symlinks to a folder outside, again and again, while the walk is repeated.
//! Nothing outside the walked folder may ever be listed (the snapshot, in its entries or in
//! what it says it left out) or counted (the disk watchdog's usage, a workspace's bytes).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use codebox::snapshot::{self, Omission, SnapshotLimits};
use codebox::workspace::Workspaces;
use codebox::workspace::disk::{self, DiskMode, DiskPolicy};
use rustix::fs::{CWD, RenameFlags, renameat_with};

/// The mark every file outside carries in its name.
const MARK: &str = "outside-secret";
/// How many folders swap at once: each is a chance for the walk to be caught between listing
/// a folder and opening it.
const SWAPPED: usize = 8;

/// Whether a path of a snapshot names anything from the folder outside.
fn leaks(path: &Path) -> bool {
    path.to_string_lossy().contains(MARK)
}

#[test]
fn folders_swapped_for_links_are_never_followed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(outside.join("nested")).expect("mkdir outside");
    for i in 0..20 {
        std::fs::write(outside.join(format!("{MARK}-{i}.csv")), "x").expect("write");
    }
    std::fs::write(outside.join(format!("nested/{MARK}-deep.csv")), "x").expect("write");
    std::fs::create_dir(&data).expect("mkdir data");
    let mut pairs: Vec<(PathBuf, PathBuf)> = Vec::new();
    for i in 0..SWAPPED {
        let folder = data.join(format!("sub{i}"));
        std::fs::create_dir(&folder).expect("mkdir");
        std::fs::write(folder.join("own.csv"), "x").expect("write");
        let link = data.join(format!("link{i}"));
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");
        pairs.push((folder, link));
    }

    // The swapper exchanges each folder with its link atomically, without pause, as hostile
    // code in the sandbox could.
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let stop = Arc::clone(&stop);
        let swaps = Arc::clone(&swaps);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (folder, link) in &pairs {
                    renameat_with(CWD, folder, CWD, link, RenameFlags::EXCHANGE).expect("exchange");
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

    let limits = SnapshotLimits {
        max_depth: 2,
        max_entries: 10_000,
    };
    let started = Instant::now();
    let mut taken = 0;
    let mut leaked = Vec::new();
    let mut leaking = 0;
    let mut caught = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let snapshot = snapshot::take(&data, limits).expect("snapshot");
        taken += 1;
        let before = leaked.len();
        leaked.extend(snapshot.entries.keys().filter(|path| leaks(path)).cloned());
        for omission in &snapshot.omissions {
            match omission {
                Omission::TooDeep(path, _) | Omission::Unreadable(path) if leaks(path) => {
                    leaked.push(path.clone());
                }
                _ => {}
            }
        }
        if leaked.len() > before {
            leaking += 1;
        }
        if snapshot
            .omissions
            .iter()
            .any(|omission| matches!(omission, Omission::Unreadable(_)))
        {
            caught += 1;
        }
        // Every folder is seen as a folder or a link, whichever it was at the moment.
        for i in 0..SWAPPED {
            assert!(
                snapshot.entries.contains_key(Path::new(&format!("sub{i}")))
                    || snapshot
                        .omissions
                        .contains(&Omission::Unreadable(PathBuf::from(format!("sub{i}")))),
                "sub{i} is missing: {:?}",
                snapshot.entries.keys().collect::<Vec<_>>()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper");
    let swaps = swaps.load(Ordering::Relaxed);
    assert!(
        swaps > 1000,
        "the swapper must really race the walk: {swaps} swaps"
    );
    // How often a swap fell between listing and opening a folder, for the record.
    eprintln!("{taken} snapshots, {swaps} swaps, {caught} caught a folder turned link");
    leaked.sort();
    leaked.dedup();
    assert!(
        leaked.is_empty(),
        "{leaking} of {taken} snapshots ({swaps} swaps) listed names from outside: {leaked:?}"
    );
}

/// Fills `data` with [`SWAPPED`] folders, each beside a link to `outside`, and starts a thread
/// that exchanges each folder with its link atomically, without pause, as hostile code in the
/// sandbox could. The thread runs until the returned flag is set; it returns how many swaps
/// it made.
fn start_swapping(data: &Path, outside: &Path) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let mut pairs: Vec<(PathBuf, PathBuf)> = Vec::new();
    for i in 0..SWAPPED {
        let folder = data.join(format!("sub{i}"));
        std::fs::create_dir(&folder).expect("mkdir");
        std::fs::write(folder.join("own.csv"), "x").expect("write");
        let link = data.join(format!("link{i}"));
        std::os::unix::fs::symlink(outside, &link).expect("symlink");
        pairs.push((folder, link));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut swaps = 0;
            while !stop.load(Ordering::Relaxed) {
                for (folder, link) in &pairs {
                    renameat_with(CWD, folder, CWD, link, RenameFlags::EXCHANGE).expect("exchange");
                    swaps += 1;
                }
            }
            swaps
        })
    };
    (stop, swapper)
}

/// The size of the file outside: far more than everything inside, so that counting it once
/// shows.
const BIG: usize = 8 * 1024 * 1024;

/// The size of a file inside that is never swapped.
const KEPT: usize = 64 * 1024;

/// A folder outside the walked one, holding a big file that is really allocated.
fn big_outside(dir: &Path) -> PathBuf {
    let outside = dir.join("outside");
    std::fs::create_dir_all(outside.join("nested")).expect("mkdir outside");
    std::fs::write(outside.join(format!("{MARK}.bin")), vec![7u8; BIG]).expect("write");
    std::fs::write(outside.join(format!("nested/{MARK}.bin")), vec![7u8; BIG]).expect("write");
    outside
}

/// Repeats `measure` for three seconds while folders are swapped for links to a folder with
/// big files, and fails if any measurement counted the bytes outside, or missed a file
/// inside that nothing moves.
fn measure_while_swapping(data: &Path, outside: &Path, measure: impl Fn() -> u64) {
    std::fs::write(data.join("kept.bin"), vec![1u8; KEPT]).expect("write");
    let (stop, swapper) = start_swapping(data, outside);
    let started = Instant::now();
    let mut measured = 0;
    let mut leaked = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        let bytes = measure();
        measured += 1;
        // What is inside is counted (the file that is never swapped at least).
        assert!(
            bytes >= KEPT as u64,
            "{bytes} bytes counted at measurement {measured}"
        );
        if bytes >= BIG as u64 {
            leaked.push(bytes);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    assert!(
        swaps > 1000,
        "the swapper must really race the walk: {swaps} swaps"
    );
    eprintln!("{measured} measurements, {swaps} swaps");
    assert!(
        leaked.is_empty(),
        "{} of {measured} measurements ({swaps} swaps) counted bytes outside, up to {:?}",
        leaked.len(),
        leaked.iter().max()
    );
}

#[test]
fn the_disk_watchdog_never_counts_what_a_swapped_link_points_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir data");
    let outside = big_outside(dir.path());
    let policy = DiskPolicy {
        mode: DiskMode::Watchdog,
        size: ByteSize::gib(1),
        files: 100_000,
    };
    measure_while_swapping(&data, &outside, || {
        let usage = disk::usage(&data, &policy).expect("usage");
        assert_eq!(usage.full, None, "{usage:?}");
        usage.bytes
    });
}

#[test]
fn workspace_bytes_never_count_what_a_swapped_link_points_to() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspaces = Workspaces::open(&dir.path().join("workspaces"), None).expect("open");
    let workspace = workspaces.prepare("w-race").expect("prepare");
    let outside = big_outside(dir.path());
    measure_while_swapping(&workspace.data, &outside, || workspace.bytes());
}
