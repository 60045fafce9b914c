//! Child processes that cannot outlive the test process.
//!
//! Linux's parent-death signal fires when the *thread* that forked the child exits, not the
//! process. Tests run on short-lived threads (and may keep a registry in a static shared by
//! several tests), so every child is forked from one long-lived spawner thread: the signal then
//! fires only when the whole test process dies, killed or not.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("harness-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the harness spawner thread");
        requests
    })
}

/// Spawn `command` so that the kernel kills it (SIGKILL) when the test process dies.
pub fn spawn_tied_to_test_process(mut command: Command) -> io::Result<Child> {
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe functions.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (reply, response) = mpsc::channel();
    spawner()
        .send((command, reply))
        .map_err(|_| io::Error::other("the harness spawner thread is gone"))?;
    response
        .recv()
        .map_err(|_| io::Error::other("the harness spawner thread dropped a request"))?
}

/// Kill a child we started and reap it; harmless if it already exited.
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM to a child we started, then up to `within` for it to exit. `None` when it did not:
/// it is then killed and reaped.
pub async fn terminate(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kill_and_reap(child);
    None
}
