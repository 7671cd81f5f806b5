//! A `saescope serve` child process on a free loopback port, and curl calls
//! against it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The server's stderr lines after the address.
    pub log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts `saescope serve --port 0 ARGS` and waits for its address.
    pub fn start(args: &[&str]) -> Server {
        Server::paced(args, 0)
    }

    /// [`Server::start`] with a pause of `pause_ms` after every decode step,
    /// so that tiny models' requests stay in flight.
    pub fn paced(args: &[&str], pause_ms: u64) -> Server {
        let mut command = Command::new(env!("CARGO_BIN_EXE_saescope"));
        if pause_ms > 0 {
            command.env("SAESCOPE_TEST_PAUSE_MS", pause_ms.to_string());
        }
        let mut child = command
            .arg("serve")
            .args(["--port", "0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start saescope serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        loop {
            let line = match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => line,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the server printed no address: {e}");
                }
            };
            if let Some(url) = line.strip_prefix("listening on ") {
                return Server {
                    child,
                    url: url.to_string(),
                    log: rx,
                };
            }
        }
    }

    /// `curl` of `path` with a JSON `body` (GET without): (status, body).
    pub fn call(&self, path: &str, body: Option<&str>, extra: &[&str]) -> (u16, String) {
        curl(&format!("{}{path}", self.url), body, extra)
    }

    /// Sends SIGTERM and waits for the exit: (success, seconds taken).
    pub fn terminate(&mut self) -> (bool, f64) {
        let start = std::time::Instant::now();
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().expect("wait for the server");
        (status.success(), start.elapsed().as_secs_f64())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl -sN` of `url` (POST with a JSON `body`): (status, body).
pub fn curl(url: &str, body: Option<&str>, extra: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sN", "-w", "\n%{http_code}", "--max-time", "300"]);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = cmd.args(extra).arg(url).output().expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// The text of a completion: the whole answer's, or the streamed chunks'
/// joined (`data: {...}` lines until `data: [DONE]`), and the finish reason.
pub fn completion_text(body: &str) -> (String, String) {
    let choice = |v: &serde_json::Value| v["choices"][0].clone();
    if !body.starts_with("data:") {
        let v: serde_json::Value = serde_json::from_str(body).expect("a JSON completion");
        let c = choice(&v);
        let text = c["text"]
            .as_str()
            .or(c["message"]["content"].as_str())
            .unwrap_or_default();
        return (
            text.to_string(),
            c["finish_reason"].as_str().unwrap_or("").into(),
        );
    }
    let (mut text, mut finish) = (String::new(), String::new());
    let mut done = false;
    for data in body.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let c = choice(&serde_json::from_str(data).expect("a JSON chunk"));
        text.push_str(
            c["text"]
                .as_str()
                .or(c["delta"]["content"].as_str())
                .unwrap_or(""),
        );
        if let Some(f) = c["finish_reason"].as_str() {
            finish = f.to_string();
        }
    }
    assert!(done, "the stream ended without [DONE]: {body}");
    (text, finish)
}
