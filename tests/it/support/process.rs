//! The credproxy binary, spawned with a clean environment (PATH without cloud CLIs, HOME
//! in a scratch directory) and watched through its output.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A scratch directory: config file, fake HOME, helper scripts and their counters.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("home")).unwrap();
        // A PATH with the few tools helper scripts use and no cloud CLI (this machine may
        // have gcloud, az or aws installed; no test may run them).
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for tool in [
            "sh", "cat", "sleep", "echo", "printf", "head", "tr", "dirname", "kill", "date",
        ] {
            let found = ["/usr/bin", "/bin"]
                .iter()
                .map(|d| PathBuf::from(d).join(tool))
                .find(|p| p.exists());
            if let Some(target) = found {
                std::os::unix::fs::symlink(target, bin.join(tool)).unwrap();
            }
        }
        Scratch { dir }
    }

    /// A port nothing listens on right now, for a config that must name a fixed one.
    pub fn free_port() -> u16 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// How many lines a file has (helpers append one per run).
    pub fn lines(&self, name: &str) -> usize {
        std::fs::read_to_string(self.path(name)).map_or(0, |t| t.lines().count())
    }

    /// A helper command that records each run in `runs` and prints the content of `key`.
    pub fn counting_helper(&self, delay: &str) -> String {
        let d = self.dir.path().display();
        format!("echo run >> {d}/runs; sleep {delay}; cat {d}/key")
    }
}

pub struct Spawn<'a> {
    scratch: &'a Scratch,
    /// None: run with the embedded default (no `--config`).
    config: Option<String>,
    listeners: usize,
    env: Vec<(String, String)>,
    args: Vec<String>,
    /// Runs the binary with this limit on open files (`ulimit -n`), through `sh`.
    open_files: Option<u32>,
}

/// Like [`credproxy`], with the embedded default config.
pub fn credproxy_default(scratch: &Scratch) -> Spawn<'_> {
    Spawn {
        scratch,
        config: None,
        listeners: 1,
        env: Vec::new(),
        args: Vec::new(),
        open_files: None,
    }
}

/// Starts credproxy with `config`, a clean environment (PATH, HOME in the scratch dir)
/// plus whatever `.env()` adds.
pub fn credproxy<'a>(scratch: &'a Scratch, config: &str) -> Spawn<'a> {
    Spawn {
        scratch,
        config: Some(config.to_string()),
        listeners: 1,
        env: Vec::new(),
        args: Vec::new(),
        open_files: None,
    }
}

impl Spawn<'_> {
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn envs(mut self, pairs: &[(&str, String)]) -> Self {
        self.env
            .extend(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())));
        self
    }

    /// How many listeners the config binds (the start waits for each).
    pub fn listeners(mut self, count: usize) -> Self {
        self.listeners = count;
        self
    }

    /// Starts credproxy with at most `limit` open files (soft and hard).
    pub fn open_files(mut self, limit: u32) -> Self {
        self.open_files = Some(limit);
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }

    fn command(&self, subcommand: Option<&str>) -> Command {
        // CREDPROXY_TEST_BINARY runs the suite against another build (an older one, to see
        // a test fail before its fix).
        let binary = std::env::var("CREDPROXY_TEST_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_credproxy").to_string());
        let mut command = match self.open_files {
            None => Command::new(binary),
            Some(limit) => {
                let mut sh = Command::new("/bin/sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(&binary);
                sh
            }
        };
        if let Some(config) = &self.config {
            command
                .arg("--config")
                .arg(self.scratch.write("credproxy.toml", config));
        }
        command
            .env_clear()
            .env("PATH", self.scratch.path("bin"))
            .env("HOME", self.scratch.path("home"))
            // Nothing may probe the real instance metadata address from a test.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(sub) = subcommand {
            command.arg(sub);
        }
        command
    }

    /// Runs a one-shot subcommand (`check`, `env`) to completion.
    pub fn run(self, subcommand: &str) -> (ExitStatus, String, String) {
        let output = self.command(Some(subcommand)).output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs `credproxy ARGS...` to completion with `input` on its standard input.
    pub async fn run_with_input(self, args: &[&str], input: &str) -> (ExitStatus, String, String) {
        use std::io::Write;
        let mut command = self.command(None);
        command.args(args).stdin(Stdio::piped());
        let input = input.to_string();
        let output = tokio::task::spawn_blocking(move || {
            let mut child = command.spawn().unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        })
        .await
        .unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// [`run`](Self::run) from async code, without blocking the runtime the fakes run on.
    pub async fn run_async(self, subcommand: &str) -> (ExitStatus, String, String) {
        let mut command = self.command(Some(subcommand));
        let output = tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Starts the proxy and waits until every listener logged its address.
    pub fn start(self) -> Running {
        let mut child = self.command(None).spawn().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let pipes: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for pipe in pipes {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let mut running = Running {
            child,
            output,
            addrs: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let addrs = running.listening_addrs();
            if addrs.len() >= self.listeners {
                running.addrs = addrs;
                return running;
            }
            if let Some(status) = running.child.try_wait().unwrap() {
                panic!(
                    "credproxy exited with {status} before listening:\n{}",
                    running.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "credproxy did not start:\n{}",
                running.output()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub struct Running {
    child: Child,
    output: Arc<Mutex<String>>,
    /// Bound addresses in the order they were logged.
    pub addrs: Vec<SocketAddr>,
}

impl Running {
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// The admin listener's base URL, from its start line (`admin=IP:PORT`).
    pub async fn admin_url(&self, path: &str) -> String {
        self.wait_for_output("admin endpoints ready").await;
        let output = self.output();
        let addr = output
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .expect("the admin line names its address");
        format!("http://{addr}{path}")
    }

    /// Everything credproxy printed so far, stdout and stderr.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    fn listening_addrs(&self) -> Vec<SocketAddr> {
        self.output()
            .lines()
            .filter(|l| l.contains("listening"))
            .filter_map(|l| {
                // Text lines carry `addr=IP:PORT`, JSON lines `"addr":"IP:PORT"`.
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .or_else(|| {
                        l.split("\"addr\":\"")
                            .nth(1)
                            .and_then(|rest| rest.split('"').next())
                    })
            })
            .filter_map(|a| a.parse().ok())
            .collect()
    }

    /// Waits until the output contains `text` (a log line the test depends on).
    pub async fn wait_for_output(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.output().contains(text) {
            assert!(
                Instant::now() < deadline,
                "no `{text}` in output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }

    /// Waits for the process to exit by itself.
    pub async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "credproxy did not exit:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
