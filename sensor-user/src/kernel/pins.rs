//! The pinned kernel state: the gates outlive the agent.
//!
//! Everything whose contents matter across an agent restart lives under one
//! bpffs directory of the product's own (default `/sys/fs/bpf/residency`):
//!
//! - `maps-v{LAYOUT_VERSION}/NAME`: every map but per-CPU scratch space (tags,
//!   selectors, verdict tables, modes, configuration, flow slots, aggregation,
//!   counters, the ring buffer, the liveness record);
//! - `links/tp-PROGRAM`: the tracepoint links;
//! - `links/cg-CGROUPID-PROGRAM`: the cgroup socket links.
//!
//! A pinned link keeps its program attached when the process that made it dies,
//! so a crash, `systemctl stop` or an upgrade never opens the gates. A starting
//! agent loads its programs against the pinned maps (the new programs see the
//! tags and verdicts the old ones kept), installs its policy into them, and then
//! swaps each cgroup link's program in place (`BPF_LINK_UPDATE`: the kernel
//! switches atomically, no instant without a program). Tracepoint links cannot
//! be updated (perf links have no `update_prog`), so the new ones are attached
//! before the old ones are removed: for a moment both run, which repeats
//! idempotent tagging and may count a few bytes twice, but never misses an exec.
//!
//! The layout version is in the maps directory's name. A build with another
//! layout creates a fresh set beside the old one, fills it, switches the links,
//! carries process tags over, and removes the old set. A single map whose shape
//! (type, key, value, capacity) differs from the object's is re-created the same
//! way.

use std::{
    ffi::CString,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, MapInfo},
    programs::links::FdLink,
};
use sensor_common::{policy::LAYOUT_VERSION, tag::TaskTag};
use tracing::{info, warn};

use crate::SensorError;

/// Where the pinned set lives unless configured otherwise.
pub const DEFAULT_DIR: &str = "/sys/fs/bpf/residency";

/// Maps that are per-CPU scratch space for one program run: never pinned.
const SCRATCH_MAPS: &[&str] = &["SCRATCH", "RECORDS", "SOCK_ADDR"];

/// bpffs's `statfs` magic.
const BPF_FS_MAGIC: libc::__fsword_t = 0xcafe_4a11;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SensorError + '_ {
    move |source| SensorError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The pinned set's directory and what a load found there.
#[derive(Debug)]
pub struct PinSet {
    dir: PathBuf,
    /// Maps taken over from an earlier agent, by name.
    pub adopted: Vec<String>,
    /// Maps that were created afresh (none pinned, or not adoptable).
    pub created: Vec<String>,
    /// Map sets of an older layout, removed once the links run the new
    /// programs.
    retired: Vec<PathBuf>,
    /// Tracepoint links pinned beside the ones they replace, switched once
    /// the cgroup links run the new programs.
    pending_links: Vec<String>,
}

impl PinSet {
    /// Prepares `dir` (on bpffs) for a load: finds which pinned maps can be
    /// adopted, moves aside those that cannot. Returns the set and, per map
    /// name of `object`, the path to pin it at.
    pub(crate) fn prepare(
        dir: &Path,
        object: &[u8],
    ) -> Result<(PinSet, Vec<(String, PathBuf)>), SensorError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        check_bpffs(dir)?;
        let maps_dir = maps_dir(dir);
        std::fs::create_dir_all(&maps_dir).map_err(io_err(&maps_dir))?;
        std::fs::create_dir_all(dir.join("links")).map_err(io_err(dir))?;
        let obj = aya_obj::Object::parse(object).map_err(|e| SensorError::Pins {
            dir: dir.to_owned(),
            reason: format!("the embedded kernel object does not parse: {e}"),
        })?;
        let mut set = PinSet {
            dir: dir.to_owned(),
            adopted: Vec::new(),
            created: Vec::new(),
            retired: Vec::new(),
            pending_links: Vec::new(),
        };
        // Older layouts, and sets a crash left aside: retired once the new
        // programs run (their process tags carried over).
        for e in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("maps-") && e.path() != maps_dir {
                set.retired.push(e.path());
            }
        }
        let mut wanted = Vec::new();
        let mut pinned = 0;
        let mut mismatches = Vec::new();
        for (name, def) in &obj.maps {
            if name.starts_with('.') || SCRATCH_MAPS.contains(&name.as_str()) {
                continue;
            }
            let path = maps_dir.join(name);
            if path.exists() {
                pinned += 1;
                match MapInfo::from_pin(&path) {
                    Ok(i)
                        if i.map_type().map(|t| t as u32).ok() == Some(def.map_type())
                            && i.key_size() == def.key_size()
                            && i.value_size() == def.value_size()
                            && i.max_entries() == def.max_entries() => {}
                    Ok(i) => mismatches.push(format!(
                        "{name}: pinned key {} value {} entries {}, this build key {} value {} entries {}",
                        i.key_size(),
                        i.value_size(),
                        i.max_entries(),
                        def.key_size(),
                        def.value_size(),
                        def.max_entries()
                    )),
                    Err(e) => mismatches.push(format!("{name}: {e}")),
                }
            } else {
                mismatches.push(format!("{name}: not pinned"));
            }
            wanted.push((name.clone(), path));
        }
        // All or nothing: programs of this build must never share a map
        // with programs of another (the configuration names which verdict
        // trie is live; a trie re-created beside an adopted configuration
        // would switch the running programs to a stale one).
        if pinned > 0 && !mismatches.is_empty() {
            warn!(dir = %dir.display(), reasons = ?mismatches, "the pinned maps do not fit this build; creating a new set beside them (process tags are carried over)");
            let aside = dir.join(format!("maps-retired-{}", crate::clock::monotonic_ns()));
            std::fs::rename(&maps_dir, &aside).map_err(io_err(&maps_dir))?;
            std::fs::create_dir_all(&maps_dir).map_err(io_err(&maps_dir))?;
            set.retired.push(aside);
            pinned = 0;
        }
        let names = wanted.iter().map(|(n, _)| n.clone());
        if pinned > 0 {
            set.adopted.extend(names);
        } else {
            set.created.extend(names);
        }
        set.adopted.sort();
        set.created.sort();
        Ok((set, wanted))
    }

    /// Whether an earlier agent's state was found (the configuration map
    /// among it: its verdict-table switch and generation must be continued).
    pub fn adopted(&self, map: &str) -> bool {
        self.adopted.iter().any(|m| m == map)
    }

    /// The directory of the set.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn link_path(&self, name: &str) -> PathBuf {
        self.dir.join("links").join(name)
    }

    /// Runs `program` on the cgroup link pinned as `name`, or, when there is
    /// none, pins `attach()`'s new link there. Returns whether a link was
    /// updated in place.
    pub(crate) fn cgroup_link(
        &self,
        name: &str,
        program: &aya::programs::ProgramFd,
        attach: impl FnOnce() -> Result<FdLink, SensorError>,
    ) -> Result<bool, SensorError> {
        let path = self.link_path(name);
        if path.exists() {
            let update = obj_get(&path).and_then(|fd| link_update(&fd, program));
            update.map_err(|e| SensorError::Pins {
                dir: path.clone(),
                reason: format!("replacing the program of the pinned link: {e} (`sensord --uninstall` removes the pinned set, which detaches it; the next start pins afresh)"),
            })?;
            return Ok(true);
        }
        let link = attach()?;
        link.pin(&path).map_err(|e| SensorError::Pins {
            dir: path.clone(),
            reason: format!("pinning the link: {}", chain(&e)),
        })?;
        Ok(false)
    }

    /// Pins a new tracepoint link beside the one pinned as `name`: both run
    /// until [`PinSet::commit_links`] (repeating idempotent tagging for a
    /// moment), so no exec or fork goes untracked while the old programs
    /// still judge.
    pub(crate) fn add_link(&mut self, name: &str, link: FdLink) -> Result<(), SensorError> {
        // bpffs refuses names with a dot.
        let fresh = self.link_path(&format!("{name}-new"));
        let _ = std::fs::remove_file(&fresh);
        link.pin(&fresh).map_err(|e| SensorError::Pins {
            dir: fresh.clone(),
            reason: format!("pinning the link: {}", chain(&e)),
        })?;
        self.pending_links.push(name.to_owned());
        Ok(())
    }

    /// Makes the links added with `add_link` the pinned ones: rename(2) over
    /// each old pin, whose link loses its last reference and detaches.
    pub(crate) fn commit_links(&mut self) -> Result<(), SensorError> {
        for name in std::mem::take(&mut self.pending_links) {
            let path = self.link_path(&name);
            std::fs::rename(self.link_path(&format!("{name}-new")), &path)
                .map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Removes pinned cgroup links that are not in `keep` (links to a cgroup
    /// the agent no longer attaches to), after the new ones run.
    pub(crate) fn remove_links_except(&self, keep: &[String]) -> Result<(), SensorError> {
        let dir = self.dir.join("links");
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                info!(link = %name, "removing a pinned link the agent no longer uses");
                std::fs::remove_file(e.path()).map_err(io_err(&e.path()))?;
            }
        }
        Ok(())
    }

    /// Copies process tags from retired sets into `tasks` (classes are a
    /// union). Call before the links switch (so the new programs start with
    /// them) and again by `retire` after (for what the old programs tagged
    /// meanwhile).
    pub(crate) fn carry_tasks(&self, tasks: &mut BpfHashMap<&mut MapData, u32, TaskTag>) -> usize {
        let mut carried = 0;
        for old in &self.retired {
            let pin = old.join("TASKS");
            if !pin.exists() {
                continue;
            }
            match copy_tasks(&pin, tasks) {
                Ok(n) => carried += n,
                Err(e) => {
                    warn!(map = %pin.display(), error = %e, "process tags of the old layout could not be carried over; selectors re-tag at the next exec and the start-up scan re-tags running processes")
                }
            }
        }
        carried
    }

    /// Carries process tags over a last time and removes every retired set.
    /// Call once the links run the new programs.
    pub(crate) fn retire(
        &mut self,
        tasks: &mut BpfHashMap<&mut MapData, u32, TaskTag>,
    ) -> Result<usize, SensorError> {
        let carried = self.carry_tasks(tasks);
        for old in std::mem::take(&mut self.retired) {
            std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
            info!(path = %old.display(), "removed pinned state of an older layout");
        }
        Ok(carried)
    }
}

/// An error with its sources ("`BPF_OBJ_PIN` failed: Permission denied").
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}

/// The maps directory of this build's layout.
fn maps_dir(dir: &Path) -> PathBuf {
    dir.join(format!("maps-v{LAYOUT_VERSION}"))
}

fn check_bpffs(dir: &Path) -> Result<(), SensorError> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| SensorError::Pins {
        dir: dir.to_owned(),
        reason: "the path contains a NUL byte".into(),
    })?;
    // SAFETY: statfs writes into the zeroed struct we own; c is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io_err(dir)(std::io::Error::last_os_error()));
    }
    if st.f_type != BPF_FS_MAGIC {
        return Err(SensorError::Pins {
            dir: dir.to_owned(),
            reason: "not on a BPF filesystem (bpffs): pins live only there; set bpf_dir to a directory under /sys/fs/bpf".into(),
        });
    }
    Ok(())
}

/// Copies every entry of the pinned process tag map at `pin` into `tasks`
/// (entries already there are merged: classes are a union).
fn copy_tasks(
    pin: &Path,
    tasks: &mut BpfHashMap<&mut MapData, u32, TaskTag>,
) -> Result<usize, SensorError> {
    let data = MapData::from_pin(pin).map_err(|source| SensorError::Map {
        name: "TASKS (old layout)",
        source,
    })?;
    let info = data.info().map_err(|source| SensorError::Map {
        name: "TASKS (old layout)",
        source,
    })?;
    if info.key_size() != 4 || info.value_size() != 8 {
        return Err(SensorError::Pins {
            dir: pin.to_owned(),
            reason: "the old process tag map has another shape".into(),
        });
    }
    let old: BpfHashMap<MapData, u32, TaskTag> =
        BpfHashMap::try_from(aya::maps::Map::HashMap(data)).map_err(|source| SensorError::Map {
            name: "TASKS (old layout)",
            source,
        })?;
    let mut n = 0;
    for (tgid, tag) in old.iter().filter_map(Result::ok) {
        let have = tasks.get(&tgid, 0).map(|t| t.classes).unwrap_or(0);
        if tasks
            .insert(
                tgid,
                TaskTag {
                    classes: have | tag.classes,
                },
                0,
            )
            .is_ok()
        {
            n += 1;
        }
    }
    Ok(n)
}

/// `bpf(2)` with `attr`, for the two commands aya 0.14 keeps crate-private.
fn sys_bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a valid bpf_attr prefix for `cmd` and lives for the
    // call; the kernel reads `size` bytes of it and zero-extends the rest.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// `BPF_OBJ_GET`: a new fd for the object pinned at `path`.
fn obj_get(path: &Path) -> std::io::Result<OwnedFd> {
    /// `union bpf_attr`'s object member.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_LINK_UPDATE`: the link runs `program` from now on (the kernel swaps
/// the program atomically).
fn link_update(link: &OwnedFd, program: &aya::programs::ProgramFd) -> std::io::Result<()> {
    /// `union bpf_attr`'s `link_update` member.
    #[repr(C)]
    struct LinkUpdate {
        link_fd: u32,
        new_prog_fd: u32,
        flags: u32,
        old_prog_fd: u32,
    }
    const BPF_LINK_UPDATE: libc::c_long = 29;
    let attr = LinkUpdate {
        link_fd: link.as_raw_fd() as u32,
        new_prog_fd: program.as_fd().as_raw_fd() as u32,
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(BPF_LINK_UPDATE, &attr).map(|_| ())
}

/// `BPF_LINK_DETACH`: the link's program stops running now. (Dropping the
/// last reference to a link, as unpinning does, detaches it from a kernel
/// work queue, some time later.)
fn link_detach(link: &OwnedFd) -> std::io::Result<()> {
    /// `union bpf_attr`'s `link_detach` member.
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    const BPF_LINK_DETACH: libc::c_long = 34;
    let attr = LinkDetach {
        link_fd: link.as_raw_fd() as u32,
    };
    sys_bpf(BPF_LINK_DETACH, &attr).map(|_| ())
}

/// Removes the pinned set at `dir`: every link detached first (at once, so
/// nothing judges once this returns; links the kernel cannot detach, the
/// tracepoints', go with their last reference), then the pins and the maps.
/// Returns whether anything was there.
pub fn uninstall(dir: &Path) -> Result<bool, SensorError> {
    if !dir.exists() {
        return Ok(false);
    }
    let links = dir.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        for e in entries.flatten() {
            if let Ok(fd) = obj_get(&e.path()) {
                let _ = link_detach(&fd);
            }
        }
    }
    if links.exists() {
        std::fs::remove_dir_all(&links).map_err(io_err(&links))?;
    }
    std::fs::remove_dir_all(dir).map_err(io_err(dir))?;
    Ok(true)
}
