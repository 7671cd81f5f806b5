//! A process group over a TCPStore rendezvous, Gloo (CPU) or NCCL (CUDA),
//! and its collectives, each bounded by the group's timeout. Tensors may be
//! on the CPU or on the group's device; an NCCL group stages CPU tensors
//! through its GPU and copies the result back. Built on the C shim
//! (`c10d_shim.cpp`, `nccl_shim.cpp`); a build without Gloo's headers has the
//! same API, and every call then says that this build has no c10d.

use std::time::Duration;

use tch::{Device, Tensor};

use super::launch::Launch;
use crate::error::{Error, Result};

#[cfg(saescope_c10d)]
mod ffi {
    use std::os::raw::{c_char, c_int};

    #[repr(C)]
    pub struct Group {
        _private: [u8; 0],
    }

    /// tch's `C_tensor`, which is an `at::Tensor`.
    pub type CTensor = torch_sys::C_tensor;

    extern "C" {
        pub fn saescope_gloo_new(
            host: *const c_char,
            port: u16,
            rank: c_int,
            world: c_int,
            agent_store: c_int,
            iface: *const c_char,
            timeout_ms: i64,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut Group;
        #[cfg(saescope_nccl)]
        pub fn saescope_nccl_new(
            host: *const c_char,
            port: u16,
            rank: c_int,
            world: c_int,
            agent_store: c_int,
            device: c_int,
            timeout_ms: i64,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut Group;
        pub fn saescope_gloo_free(g: *mut Group);
        pub fn saescope_all_reduce_sum(
            g: *mut Group,
            t: *mut CTensor,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn saescope_broadcast(
            g: *mut Group,
            t: *mut CTensor,
            root: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn saescope_all_gather(
            g: *mut Group,
            t: *mut CTensor,
            outs: *mut *mut CTensor,
            world: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn saescope_all_to_all(
            g: *mut Group,
            output: *mut CTensor,
            input: *mut CTensor,
            recv_rows: *const i64,
            send_rows: *const i64,
            world: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn saescope_barrier(g: *mut Group, err: *mut c_char, err_len: usize) -> c_int;
        pub fn saescope_store_set(
            g: *mut Group,
            key: *const c_char,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn saescope_store_check(
            g: *mut Group,
            key: *const c_char,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
    }
}

/// Room for a C++ exception's message.
#[cfg(saescope_c10d)]
const ERR_LEN: usize = 2048;

/// Runs one shim call with an error buffer: its message, prefixed by `what`
/// and this rank, when it fails.
#[cfg(saescope_c10d)]
fn checked(
    rank: usize,
    what: &str,
    call: impl FnOnce(*mut std::os::raw::c_char, usize) -> i32,
) -> Result<()> {
    let mut err = vec![0u8; ERR_LEN];
    if call(err.as_mut_ptr() as *mut std::os::raw::c_char, ERR_LEN) == 0 {
        return Ok(());
    }
    Err(Error::Distributed(format!(
        "rank {rank}: {what} failed: {}",
        c_message(&err)
    )))
}

/// The C string at the start of `buffer`.
#[cfg(saescope_c10d)]
fn c_message(buffer: &[u8]) -> String {
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// Whether a collective's error means that a peer is gone or silent.
#[cfg(saescope_c10d)]
fn peer_trouble(message: &str) -> bool {
    let lower = message.to_lowercase();
    [
        "closed by peer",
        "connection reset",
        "timed out",
        "timeout",
        "broken pipe",
    ]
    .iter()
    .any(|sign| lower.contains(sign))
}

/// How long a failed rank waits for the others to answer its roll call.
#[cfg(saescope_c10d)]
const ROLL_CALL_WAIT: Duration = Duration::from_secs(5);

/// `ranks` as words: "rank 1", "ranks 1, 3".
#[cfg(saescope_c10d)]
fn rank_list(ranks: &[usize]) -> String {
    let list: Vec<String> = ranks.iter().map(usize::to_string).collect();
    let noun = if ranks.len() == 1 { "rank" } else { "ranks" };
    format!("{noun} {}", list.join(", "))
}

/// The ranks of a job, joined.
pub struct ProcessGroup {
    #[cfg(saescope_c10d)]
    raw: *mut ffi::Group,
    rank: usize,
    world_size: usize,
    /// Where the collectives run: the CPU (Gloo) or a CUDA device (NCCL).
    device: Device,
}

// SAFETY: c10d's process groups are used from any thread in PyTorch; this
// one is only ever called from one thread at a time (`&mut self` or the
// caller's own sequencing), and freed once.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Joins `launch`'s job over Gloo: rank 0 (or torchrun's agent) serves
    /// the rendezvous store at `MASTER_ADDR:MASTER_PORT`; every operation,
    /// joining included, gives up after `timeout`.
    #[cfg(saescope_c10d)]
    pub fn gloo(launch: &Launch, timeout: Duration) -> Result<ProcessGroup> {
        let host = std::ffi::CString::new(launch.master_addr.clone())
            .map_err(|_| Error::Distributed("MASTER_ADDR holds a NUL byte".into()))?;
        let iface = std::ffi::CString::new(launch.interface.clone().unwrap_or_default())
            .map_err(|_| Error::Distributed("GLOO_SOCKET_IFNAME holds a NUL byte".into()))?;
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        Self::joined(launch, "joining the job", Device::Cpu, |err, len| {
            // SAFETY: valid C strings and buffer; the shim catches every C++
            // exception and returns null on failure.
            unsafe {
                ffi::saescope_gloo_new(
                    host.as_ptr(),
                    launch.master_port,
                    launch.rank as i32,
                    launch.world_size as i32,
                    i32::from(launch.agent_store),
                    iface.as_ptr(),
                    ms,
                    err,
                    len,
                )
            }
        })
    }

    /// The group a shim constructor `create` returns (null on failure, its
    /// message in the error buffer), for `launch`'s rank, running on `device`.
    #[cfg(saescope_c10d)]
    fn joined(
        launch: &Launch,
        what: &str,
        device: Device,
        create: impl FnOnce(*mut std::os::raw::c_char, usize) -> *mut ffi::Group,
    ) -> Result<ProcessGroup> {
        let mut raw = std::ptr::null_mut();
        checked(launch.rank, what, |err, len| {
            raw = create(err, len);
            i32::from(raw.is_null())
        })?;
        let group = ProcessGroup {
            raw,
            rank: launch.rank,
            world_size: launch.world_size,
            device,
        };
        // A rank's own mesh can be complete while a peer's is not; without
        // this barrier a rank that fails straight after joining (a refused
        // resume, say) closes its sockets under that peer, which then fails
        // with "connection closed" instead of the refusal's reason.
        group.barrier()?;
        Ok(group)
    }

    /// Joins `launch`'s job over NCCL on CUDA device `cuda_index`; every
    /// operation, joining included, gives up after `timeout`.
    #[cfg(saescope_nccl)]
    pub fn nccl(launch: &Launch, cuda_index: usize, timeout: Duration) -> Result<ProcessGroup> {
        let host = std::ffi::CString::new(launch.master_addr.clone())
            .map_err(|_| Error::Distributed("MASTER_ADDR holds a NUL byte".into()))?;
        if cuda_index >= tch::Cuda::device_count().max(0) as usize {
            return Err(Error::Distributed(format!(
                "rank {}: NCCL needs CUDA device {cuda_index}, and this machine shows {}",
                launch.rank,
                tch::Cuda::device_count()
            )));
        }
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let device = Device::Cuda(cuda_index);
        Self::joined(launch, "joining the job over NCCL", device, |err, len| {
            // SAFETY: as in `gloo`.
            unsafe {
                ffi::saescope_nccl_new(
                    host.as_ptr(),
                    launch.master_port,
                    launch.rank as i32,
                    launch.world_size as i32,
                    i32::from(launch.agent_store),
                    cuda_index as i32,
                    ms,
                    err,
                    len,
                )
            }
        })
    }

    #[cfg(not(saescope_nccl))]
    pub fn nccl(launch: &Launch, _cuda_index: usize, _timeout: Duration) -> Result<ProcessGroup> {
        Err(Error::Distributed(format!(
            "rank {}: this saescope was built without NCCL (its libtorch has no CUDA, or \
             NCCL's headers were missing at build time)",
            launch.rank
        )))
    }

    /// Runs one collective's shim call; when it fails because a peer is
    /// gone or silent, the error also names the ranks that do not answer a
    /// roll call in the rendezvous store.
    #[cfg(saescope_c10d)]
    fn collective(
        &self,
        what: &str,
        call: impl FnOnce(*mut std::os::raw::c_char, usize) -> i32,
    ) -> Result<()> {
        checked(self.rank, what, call).map_err(|e| match e {
            Error::Distributed(message) if peer_trouble(&message) => {
                Error::Distributed(format!("{message}; {}", self.roll_call()))
            }
            other => other,
        })
    }

    /// After a failed collective: this rank says so in the rendezvous store
    /// and waits up to [`ROLL_CALL_WAIT`] for every rank to say the same
    /// (those alive fail too, at their next collective); what it found.
    #[cfg(saescope_c10d)]
    fn roll_call(&self) -> String {
        let key = |rank: usize| {
            std::ffi::CString::new(format!("saescope/roll_call/rank{rank}")).unwrap_or_default()
        };
        let mut err = vec![0u8; ERR_LEN];
        let gone = "the rendezvous store does not answer: rank 0, which serves it (unless torchrun's agent does), has exited or was killed";
        let mine = key(self.rank);
        // SAFETY: live group, C string and buffer; the shim catches exceptions.
        if unsafe {
            ffi::saescope_store_set(self.raw, mine.as_ptr(), err.as_mut_ptr().cast(), ERR_LEN)
        } != 0
        {
            return gone.into();
        }
        let deadline = std::time::Instant::now() + ROLL_CALL_WAIT;
        loop {
            let mut missing = Vec::new();
            for rank in 0..self.world_size {
                let name = key(rank);
                // SAFETY: as above.
                match unsafe {
                    ffi::saescope_store_check(
                        self.raw,
                        name.as_ptr(),
                        err.as_mut_ptr().cast(),
                        ERR_LEN,
                    )
                } {
                    1 => {}
                    0 => missing.push(rank),
                    _ => return gone.into(),
                }
            }
            if missing.is_empty() {
                return "every rank answered a roll call, so none has died: one may be slow, or the network failed".into();
            }
            if std::time::Instant::now() >= deadline {
                return format!(
                    "{} did not answer a roll call within {} s: exited, killed or stuck",
                    rank_list(&missing),
                    ROLL_CALL_WAIT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether this build has the NCCL backend.
    pub fn nccl_available() -> bool {
        cfg!(saescope_nccl)
    }

    /// Where the collectives run.
    pub fn device(&self) -> Device {
        self.device
    }

    /// `t` where the collectives run (itself when it is there already).
    fn staged(&self, t: &Tensor) -> Result<Tensor> {
        if t.device() == self.device {
            Ok(t.shallow_clone())
        } else {
            Ok(t.f_to_device(self.device)?.f_contiguous()?)
        }
    }

    #[cfg(not(saescope_c10d))]
    pub fn gloo(launch: &Launch, _timeout: Duration) -> Result<ProcessGroup> {
        Err(Error::Distributed(format!(
            "rank {}: this saescope was built without c10d (Gloo's headers were missing; \
             apt install libgloo-dev and rebuild)",
            launch.rank
        )))
    }

    /// Whether this build can join a job at all.
    pub fn available() -> bool {
        cfg!(saescope_c10d)
    }

    /// Sums `t` (contiguous) over the ranks, in place.
    pub fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        self.check_tensor(t, "all-reduce")?;
        #[cfg(saescope_c10d)]
        {
            let raw = self.raw;
            let mut work = self.staged(t)?;
            let ptr = work.as_mut_ptr();
            // SAFETY: live group and tensor; the shim catches exceptions.
            self.collective("all-reduce", |err, len| unsafe {
                ffi::saescope_all_reduce_sum(raw, ptr, err, len)
            })?;
            self.copy_back(t, &work)
        }
        #[cfg(not(saescope_c10d))]
        unreachable_without_c10d()
    }

    /// Copies rank `root`'s `t` into every rank's `t`, in place.
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        self.check_tensor(t, "broadcast")?;
        self.check_rank(root)?;
        #[cfg(saescope_c10d)]
        {
            let raw = self.raw;
            let mut work = self.staged(t)?;
            let ptr = work.as_mut_ptr();
            // SAFETY: as in `all_reduce_sum`.
            self.collective("broadcast", |err, len| unsafe {
                ffi::saescope_broadcast(raw, ptr, root as i32, err, len)
            })?;
            self.copy_back(t, &work)
        }
        #[cfg(not(saescope_c10d))]
        unreachable_without_c10d()
    }

    /// Every rank's `t` (all shaped alike), in rank order.
    pub fn all_gather(&self, t: &Tensor) -> Result<Vec<Tensor>> {
        self.check_tensor(t, "all-gather")?;
        let mut input = self.staged(t)?;
        let mut outs: Vec<Tensor> = (0..self.world_size)
            .map(|_| input.f_empty_like())
            .collect::<std::result::Result<_, _>>()?;
        #[cfg(saescope_c10d)]
        {
            let raw = self.raw;
            let input = input.as_mut_ptr();
            let mut ptrs: Vec<*mut ffi::CTensor> =
                outs.iter_mut().map(|o| o.as_mut_ptr()).collect();
            let world = self.world_size as i32;
            // SAFETY: as in `all_reduce_sum`; `ptrs` holds `world` live tensors.
            self.collective("all-gather", |err, len| unsafe {
                ffi::saescope_all_gather(raw, input, ptrs.as_mut_ptr(), world, err, len)
            })?;
            outs.iter()
                .map(|o| Ok(o.f_to_device(t.device())?))
                .collect()
        }
        #[cfg(not(saescope_c10d))]
        {
            outs.clear();
            let _ = &mut input;
            unreachable_without_c10d()
        }
    }

    /// Sends rows `[Σ send_rows[..r], +send_rows[r])` of `input [n, ...]` to
    /// rank `r` and returns the rows every rank sent here, in rank order
    /// (`recv_rows[r]` from rank `r`). Both lists are `world_size` long.
    pub fn all_to_all(
        &self,
        input: &Tensor,
        send_rows: &[i64],
        recv_rows: &[i64],
    ) -> Result<Tensor> {
        self.check_tensor(input, "all-to-all")?;
        let n = input.size().first().copied().unwrap_or(0);
        if send_rows.len() != self.world_size
            || recv_rows.len() != self.world_size
            || send_rows.iter().chain(recv_rows).any(|&r| r < 0)
            || send_rows.iter().sum::<i64>() != n
        {
            return Err(Error::Distributed(format!(
                "rank {}: all-to-all of {n} rows split as {send_rows:?}, received as {recv_rows:?}, \
                 for {} ranks",
                self.rank, self.world_size
            )));
        }
        let mut shape = input.size();
        shape[0] = recv_rows.iter().sum();
        let mut output = Tensor::f_empty(shape.as_slice(), (input.kind(), self.device))?;
        let back_to = input.device();
        #[cfg(saescope_c10d)]
        {
            let raw = self.raw;
            let mut input = self.staged(input)?;
            let (input, out) = (input.as_mut_ptr(), output.as_mut_ptr());
            let world = self.world_size as i32;
            // SAFETY: as in `all_reduce_sum`; the splits are `world` long.
            self.collective("all-to-all", |err, len| unsafe {
                ffi::saescope_all_to_all(
                    raw,
                    out,
                    input,
                    recv_rows.as_ptr(),
                    send_rows.as_ptr(),
                    world,
                    err,
                    len,
                )
            })?;
            Ok(output.f_to_device(back_to)?)
        }
        #[cfg(not(saescope_c10d))]
        {
            let _ = (&mut output, back_to);
            unreachable_without_c10d()
        }
    }

    /// Waits until every rank arrives (or the timeout passes).
    pub fn barrier(&self) -> Result<()> {
        #[cfg(saescope_c10d)]
        {
            let raw = self.raw;
            // SAFETY: live group; the shim catches exceptions.
            self.collective("barrier", |err, len| unsafe {
                ffi::saescope_barrier(raw, err, len)
            })
        }
        #[cfg(not(saescope_c10d))]
        unreachable_without_c10d()
    }

    fn check_tensor(&self, t: &Tensor, what: &str) -> Result<()> {
        let placed = t.device() == Device::Cpu || t.device() == self.device;
        if !placed || !t.is_contiguous() {
            return Err(Error::Distributed(format!(
                "rank {}: {what} needs a contiguous tensor on the CPU or on {:?}, got one on {:?}",
                self.rank,
                self.device,
                t.device()
            )));
        }
        Ok(())
    }

    /// Copies the collective's result `work` into `t` when it was staged elsewhere.
    #[cfg(saescope_c10d)]
    fn copy_back(&self, t: &mut Tensor, work: &Tensor) -> Result<()> {
        if t.device() != work.device() {
            t.f_copy_(work)?;
        }
        Ok(())
    }

    fn check_rank(&self, rank: usize) -> Result<()> {
        if rank >= self.world_size {
            return Err(Error::Distributed(format!(
                "rank {rank} is not in a job of {} ranks",
                self.world_size
            )));
        }
        Ok(())
    }
}

#[cfg(not(saescope_c10d))]
fn unreachable_without_c10d<T>() -> Result<T> {
    Err(Error::Distributed(
        "this saescope was built without c10d".into(),
    ))
}

#[cfg(saescope_c10d)]
impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by `saescope_gloo_new`, freed once.
        unsafe { ffi::saescope_gloo_free(self.raw) };
    }
}
