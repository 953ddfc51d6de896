//! Node-local IPAM: one IPv4 range per network, state in one JSON file under a lock.
//!
//! Layout under `ipam.dataDir`: `<network>/lock` (flock, never deleted), two data slots
//! `<network>/state.a.json` and `state.b.json`, and `<network>/state.json`, a symlink to
//! the current slot. A change is written in place into the other slot, then a new symlink
//! (`state.json.tmp`) is renamed over `state.json`, so a plugin killed at any point leaves
//! either the old or the new state, never a torn one. Readers open `state.json` under the
//! lock. No fsync: the state records the kernel boot id and a state from an earlier boot is
//! discarded on load (every pod and veth of that boot is gone), so only process crashes, not
//! power loss, have to be survived, and the page cache survives those.
//!
//! Why slots rather than renaming a new file over `state.json`: the rename drops the last
//! link of the previous file, and freeing its blocks is synchronous in `rename(2)`; on a
//! filesystem mounted with online discard (ext4 `-o discard`, as on the CI machines) that is
//! a discard request the plugin waits for on every ADD and DEL (1.5 ms at the median, tens of
//! ms to seconds behind other disk traffic; docs/performance.md). The slots keep their
//! blocks, and the replaced symlink has none.
//!
//! The free set is a roaring bitmap: the addresses the node owns minus the allocated ones.
//! For local IPAM "owned" is the configured range. A cloud warm pool (ENI-style, as
//! Terway's) fits the same shape: "owned" becomes the addresses attached to the node, and
//! a refill step after each change keeps the free count between a low and a high watermark.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};

use crate::config::{Attachment, IpamConf};
use crate::error::Error;

const STATE_FORMAT: u32 = 1;
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// The two data slots `state.json` alternates between (relative symlink targets).
const SLOTS: [&str; 2] = ["state.a.json", "state.b.json"];

/// One address held by one (container, interface).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
    pub host_ifname: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateFile {
    format: u32,
    boot_id: String,
    #[serde(default)]
    last_reserved: Option<Ipv4Addr>,
    #[serde(default)]
    allocations: Vec<Allocation>,
}

/// The pool's state, loaded under the lock.
#[derive(Debug, Clone)]
pub struct State {
    file: StateFile,
    base: u32,
    start: u32,
    end: u32,
    range: String,
}

impl State {
    fn new(conf: &IpamConf, file: StateFile) -> State {
        let base = u32::from(conf.subnet);
        State {
            file,
            base,
            start: u32::from(conf.range_start) - base,
            end: u32::from(conf.range_end) - base,
            range: format!("{}-{}", conf.range_start, conf.range_end),
        }
    }

    /// Offsets (from the subnet base) the node may hand out.
    fn owned(&self) -> RoaringBitmap {
        let mut b = RoaringBitmap::new();
        b.insert_range(self.start..=self.end);
        b
    }

    fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        u32::from(ip)
            .checked_sub(self.base)
            .filter(|o| (self.start..=self.end).contains(o))
    }

    fn free_set(&self) -> RoaringBitmap {
        let mut free = self.owned();
        for a in &self.file.allocations {
            if let Some(o) = self.offset(a.ip) {
                free.remove(o);
            }
        }
        free
    }

    pub fn free_count(&self) -> u64 {
        self.free_set().len()
    }

    pub fn allocations(&self) -> &[Allocation] {
        &self.file.allocations
    }

    pub fn find(&self, container_id: &str, ifname: &str) -> Option<&Allocation> {
        self.file
            .allocations
            .iter()
            .find(|a| a.container_id == container_id && a.ifname == ifname)
    }

    /// Reserves the next free address after the last one handed out (round robin, like
    /// host-local, so a just-released address is not reused at once).
    pub fn allocate(
        &mut self,
        container_id: &str,
        ifname: &str,
        host_ifname: &str,
    ) -> Result<Ipv4Addr, Error> {
        if let Some(a) = self.find(container_id, ifname) {
            return Err(Error::DuplicateAttachment {
                container_id: container_id.to_owned(),
                ifname: ifname.to_owned(),
                ip: a.ip.to_string(),
            });
        }
        let free = self.free_set();
        let after = self.file.last_reserved.and_then(|ip| self.offset(ip));
        let next = after
            .and_then(|last| free.select(u32::try_from(free.rank(last)).ok()?))
            .or_else(|| free.min())
            .ok_or_else(|| Error::PoolExhausted {
                range: self.range.clone(),
            })?;
        let ip = Ipv4Addr::from(self.base + next);
        self.file.last_reserved = Some(ip);
        self.file.allocations.push(Allocation {
            ip,
            container_id: container_id.to_owned(),
            ifname: ifname.to_owned(),
            host_ifname: host_ifname.to_owned(),
        });
        Ok(ip)
    }

    pub fn release(&mut self, container_id: &str, ifname: &str) -> Option<Allocation> {
        let i = self
            .file
            .allocations
            .iter()
            .position(|a| a.container_id == container_id && a.ifname == ifname)?;
        Some(self.file.allocations.remove(i))
    }

    /// Puts back allocations taken out by [`State::release_invalid`] whose cleanup failed.
    pub fn restore(&mut self, allocations: Vec<Allocation>) {
        self.file.allocations.extend(allocations);
    }

    /// GC: releases every allocation whose (container, interface) is not in `valid`.
    pub fn release_invalid(&mut self, valid: &[Attachment]) -> Vec<Allocation> {
        let (keep, gone) = std::mem::take(&mut self.file.allocations)
            .into_iter()
            .partition(|a| {
                valid
                    .iter()
                    .any(|v| v.container_id == a.container_id && v.ifname == a.ifname)
            });
        self.file.allocations = keep;
        gone
    }
}

/// The on-disk store of one network's pool.
#[derive(Debug, Clone)]
pub struct Store {
    conf: IpamConf,
    dir: PathBuf,
    boot_id: String,
}

/// The store, locked, with its state loaded. Dropping it releases the lock.
#[derive(Debug)]
pub struct Locked<'a> {
    store: &'a Store,
    _lock: Flock<File>,
    pub state: State,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::IpamIo {
        path: path.to_owned(),
        source,
    }
}

impl Store {
    pub fn new(conf: &IpamConf, network: &str) -> Store {
        let boot_id = fs::read_to_string(BOOT_ID_PATH)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Store::with_boot_id(conf, network, boot_id)
    }

    pub fn with_boot_id(conf: &IpamConf, network: &str, boot_id: String) -> Store {
        Store {
            conf: conf.clone(),
            dir: conf.data_dir.join(network),
            boot_id,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn tmp_path(&self) -> PathBuf {
        self.dir.join("state.json.tmp")
    }

    /// The slot `state.json` does not point at (the first one if it is not a symlink).
    fn next_slot(&self) -> &'static str {
        match fs::read_link(self.state_path()) {
            Ok(target) if target == Path::new(SLOTS[0]) => SLOTS[1],
            _ => SLOTS[0],
        }
    }

    /// Takes the lock (blocking) and loads the state.
    pub fn lock(&self) -> Result<Locked<'_>, Error> {
        fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let lock_path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::IpamIo {
                path: lock_path.clone(),
                source: errno.into(),
            })?;
        // A plugin killed between write and rename leaves the temporary file behind.
        match fs::remove_file(self.tmp_path()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.tmp_path())(e)),
        }
        let state = State::new(&self.conf, self.load()?);
        Ok(Locked {
            store: self,
            _lock: lock,
            state,
        })
    }

    fn load(&self) -> Result<StateFile, Error> {
        let path = self.state_path();
        let fresh = || StateFile {
            format: STATE_FORMAT,
            boot_id: self.boot_id.clone(),
            ..StateFile::default()
        };
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(fresh()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let file: StateFile =
            serde_json::from_slice(&bytes).map_err(|source| Error::IpamCorrupt {
                path: path.clone(),
                source,
            })?;
        if file.boot_id != self.boot_id {
            // Every allocation of an earlier boot is stale: its netns and veth are gone.
            return Ok(fresh());
        }
        Ok(file)
    }
}

impl Locked<'_> {
    /// Writes the state (temporary file, then rename).
    pub fn commit(&self) -> Result<(), Error> {
        let tmp = self.store.tmp_path();
        let mut bytes =
            serde_json::to_vec_pretty(&self.state.file).map_err(|source| Error::IpamCorrupt {
                path: tmp.clone(),
                source,
            })?;
        bytes.push(b'\n');
        let slot_name = self.store.next_slot();
        let slot = self.store.dir.join(slot_name);
        // In place: no O_TRUNC (which frees every block), only the tail past the new length.
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&slot)
            .map_err(io_err(&slot))?;
        f.write_all(&bytes).map_err(io_err(&slot))?;
        f.set_len(bytes.len() as u64).map_err(io_err(&slot))?;
        drop(f);
        std::os::unix::fs::symlink(slot_name, &tmp).map_err(io_err(&tmp))?;
        let path = self.store.state_path();
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(dir: &Path, start: u8, end: u8) -> IpamConf {
        IpamConf {
            subnet: Ipv4Addr::new(10, 9, 0, 0),
            prefix_len: 24,
            range_start: Ipv4Addr::new(10, 9, 0, start),
            range_end: Ipv4Addr::new(10, 9, 0, end),
            data_dir: dir.to_owned(),
        }
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("palisade-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn allocate_round_robin_release_exhaust() {
        let dir = tempdir("rr");
        let store = Store::with_boot_id(&conf(&dir, 1, 3), "net", "boot-a".into());
        let mut l = store.lock().unwrap();
        let a = l.state.allocate("c1", "eth0", "h1").unwrap();
        let b = l.state.allocate("c2", "eth0", "h2").unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 9, 0, 1), Ipv4Addr::new(10, 9, 0, 2))
        );
        assert!(matches!(
            l.state.allocate("c1", "eth0", "h1"),
            Err(Error::DuplicateAttachment { .. })
        ));
        l.state.release("c1", "eth0").unwrap();
        // Round robin: .3 before the released .1.
        assert_eq!(
            l.state.allocate("c3", "eth0", "h3").unwrap(),
            Ipv4Addr::new(10, 9, 0, 3)
        );
        assert_eq!(
            l.state.allocate("c4", "eth0", "h4").unwrap(),
            Ipv4Addr::new(10, 9, 0, 1)
        );
        assert_eq!(l.state.free_count(), 0);
        let e = l.state.allocate("c5", "eth0", "h5").unwrap_err();
        assert_eq!(e.code(), crate::error::code::POOL_EXHAUSTED);
        l.commit().unwrap();
        drop(l);
        let l = store.lock().unwrap();
        assert_eq!(l.state.allocations().len(), 3);
        drop(l);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn earlier_boot_is_discarded_and_tmp_removed() {
        let dir = tempdir("boot");
        let store = Store::with_boot_id(&conf(&dir, 1, 10), "net", "boot-a".into());
        let mut l = store.lock().unwrap();
        l.state.allocate("c1", "eth0", "h1").unwrap();
        l.commit().unwrap();
        drop(l);
        fs::write(store.tmp_path(), b"torn").unwrap();
        let next_boot = Store::with_boot_id(&conf(&dir, 1, 10), "net", "boot-b".into());
        let l = next_boot.lock().unwrap();
        assert!(l.state.allocations().is_empty());
        assert!(!store.tmp_path().exists());
        drop(l);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn commits_alternate_slots_in_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempdir("slots");
        let store = Store::with_boot_id(&conf(&dir, 1, 10), "net", "b".into());
        let mut inodes = Vec::new();
        for (i, c) in ["c1", "c2", "c3", "c4"].into_iter().enumerate() {
            let mut l = store.lock().unwrap();
            l.state.allocate(c, "eth0", c).unwrap();
            l.commit().unwrap();
            drop(l);
            let target = fs::read_link(store.state_path()).unwrap();
            assert_eq!(target, Path::new(SLOTS[i % 2]), "commit {i}");
            inodes.push(fs::metadata(store.state_path()).unwrap().ino());
            assert!(!store.tmp_path().exists());
            // What a reader without the library sees: the whole state, through the link.
            let v: serde_json::Value =
                serde_json::from_slice(&fs::read(store.state_path()).unwrap()).unwrap();
            assert_eq!(v["allocations"].as_array().unwrap().len(), i + 1);
        }
        // The slots are rewritten in place, not replaced.
        assert_eq!((inodes[0], inodes[1]), (inodes[2], inodes[3]));
        // A shorter state leaves no stale tail behind.
        let mut l = store.lock().unwrap();
        for c in ["c1", "c2", "c3", "c4"] {
            l.state.release(c, "eth0").unwrap();
        }
        l.commit().unwrap();
        drop(l);
        assert!(store.lock().unwrap().state.allocations().is_empty());
        // A plugin killed between symlink and rename leaves the temporary link: the next lock
        // removes it and the state is unchanged.
        std::os::unix::fs::symlink(SLOTS[0], store.tmp_path()).unwrap();
        assert!(store.lock().unwrap().state.allocations().is_empty());
        assert!(fs::symlink_metadata(store.tmp_path()).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn gc_keeps_valid_only() {
        let dir = tempdir("gc");
        let store = Store::with_boot_id(&conf(&dir, 1, 10), "net", "b".into());
        let mut l = store.lock().unwrap();
        for c in ["a", "b", "c"] {
            l.state.allocate(c, "eth0", c).unwrap();
        }
        let valid = [Attachment {
            container_id: "b".into(),
            ifname: "eth0".into(),
        }];
        let gone = l.state.release_invalid(&valid);
        assert_eq!(
            gone.iter()
                .map(|a| a.container_id.as_str())
                .collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(l.state.allocations().len(), 1);
        assert!(l.state.release_invalid(&[]).len() == 1);
        drop(l);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_reset() {
        let dir = tempdir("corrupt");
        let store = Store::with_boot_id(&conf(&dir, 1, 10), "net", "b".into());
        fs::create_dir_all(store.dir()).unwrap();
        fs::write(store.state_path(), b"{not json").unwrap();
        assert!(matches!(store.lock(), Err(Error::IpamCorrupt { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }
}
