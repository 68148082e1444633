//! A shell command that prints the key, like Claude Code's `apiKeyHelper`
//! (`op read op://...`, `vault kv get -field=key ...`, a script of your own).

use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{Fetched, Lifetime, Material, Secret, SourceError, Token};

/// More than any key or token; a helper that prints more is printing something else.
const STDOUT_CAP: usize = 64 * 1024;
/// Enough of stderr to quote its first line in an error.
const STDERR_CAP: usize = 8 * 1024;

pub struct Helper {
    command: String,
    /// The command's program name: all of the command that messages may show (its
    /// arguments, or a `VAR=value` before it, may hold a secret).
    program: String,
    ttl: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for Helper {
    /// The command itself may hold a secret: only its program name is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helper")
            .field("program", &self.program)
            .field("ttl", &self.ttl)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Helper {
    pub fn new(command: String, ttl: Duration, timeout: Duration) -> Self {
        Helper {
            program: program_name(&command),
            command,
            ttl,
            timeout,
        }
    }

    pub fn describe(&self) -> String {
        format!("helper `{}`", self.program)
    }

    /// Runs the command once with `sh -c`, in a process group of its own so that a timeout
    /// kills everything it started, not just the shell.
    ///
    /// Errors say what happened (exit status, duration, what was wrong with the output)
    /// and never quote the helper: what it printed goes into the error's diagnostic, for
    /// credproxy's log, with anything it printed on stdout removed from it.
    pub async fn fetch(&self) -> Result<Fetched, SourceError> {
        let started = Instant::now();
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                SourceError::unrecoverable(format!("{} could not start", self.describe()))
                    .caused_by(e)
            })?;
        let group = child.id().map(|id| Pid::from_raw(id as i32));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        let run = async {
            let (out, err, status) = tokio::join!(
                read_capped(stdout, STDOUT_CAP),
                read_capped(stderr, STDERR_CAP),
                child.wait()
            );
            (out, err, status)
        };
        let outcome = tokio::time::timeout(self.timeout, run).await;
        let took = started.elapsed();
        let (out, err, status) = match outcome {
            Ok(done) => done,
            Err(_) => {
                if let Some(group) = group {
                    let _ = killpg(group, Signal::SIGKILL);
                }
                let _ = child.wait().await;
                return Err(SourceError::transient(format!(
                    "{} timed out after {}; its process group was killed",
                    self.describe(),
                    seconds(took)
                )));
            }
        };
        let status = status.map_err(|e| {
            SourceError::transient(format!("{} could not be waited for", self.describe()))
                .caused_by(e)
        })?;
        let diagnose = |error: SourceError| match first_line(&err, &out) {
            Some(line) => error.with_diagnostic(format!("its stderr began: {line}")),
            None => error,
        };
        // Checked before the exit status: we stop reading past the cap, so an oversized
        // writer usually dies of SIGPIPE.
        if out.len() > STDOUT_CAP {
            return Err(diagnose(SourceError::unrecoverable(format!(
                "{} printed more than {} KiB after {}; it must print the key alone",
                self.describe(),
                STDOUT_CAP / 1024,
                seconds(took)
            ))));
        }
        if !status.success() {
            let how = match status.code() {
                Some(code) => format!("exited with status {code}"),
                None => "was killed by a signal".to_string(),
            };
            return Err(diagnose(SourceError::transient(format!(
                "{} {how} after {}; what it printed is in credproxy's log",
                self.describe(),
                seconds(took)
            ))));
        }
        let fail = |what: &str| {
            diagnose(SourceError::unrecoverable(format!(
                "{} {what} (exit 0 after {})",
                self.describe(),
                seconds(took)
            )))
        };
        let text =
            std::str::from_utf8(&out).map_err(|_| fail("printed bytes that are not UTF-8"))?;
        let key = text.trim();
        if key.is_empty() {
            return Err(fail("printed nothing"));
        }
        if key.contains(['\n', '\r']) {
            return Err(fail(
                "printed more than one line; it must print the key alone",
            ));
        }
        let token = Token::new(Secret::new(key)).map_err(|e| {
            fail(&format!(
                "printed a value that {}",
                e.message().trim_start_matches("the key ")
            ))
        })?;
        tracing::debug!(helper = %self.program, took_ms = took.as_millis() as u64, "helper produced a key");
        Ok(Fetched {
            material: Material::Token(token),
            lifetime: Lifetime::Ttl(self.ttl),
            via: None,
        })
    }
}

/// The first non-blank line of `stderr`, shortened, with every line of `stdout` (what a
/// helper prints there is, or may be, the key) replaced by the redaction marker.
fn first_line(stderr: &[u8], stdout: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let mut line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())?
        .to_string();
    // Scrubbed before it is shortened, so no part of a key is left at the cut.
    for printed in String::from_utf8_lossy(stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.len() >= 4)
    {
        line = line.replace(printed, Secret::REDACTED);
    }
    Some(abbreviate(&line, 200))
}

/// `op read op://dev/key` → `op`; `VAULT_TOKEN=hvs.x vault read k` → `vault`;
/// `env A=b /usr/bin/helper --x` → `helper`.
fn program_name(command: &str) -> String {
    let mut program = "sh";
    for word in command.split_whitespace() {
        if word.contains(['\'', '"', '\\']) {
            return "sh".to_string();
        }
        let assignment = word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
        if assignment
            || word.starts_with('-')
            || matches!(word, "env" | "exec" | "command" | "nohup")
        {
            continue;
        }
        program = word;
        break;
    }
    let name = program.rsplit('/').next().unwrap_or(program);
    let looks_like_a_key = name.len() > 32 || name.starts_with("sk-") || name.starts_with("hvs.");
    if looks_like_a_key {
        return "sh".to_string();
    }
    let name: String = name
        .chars()
        .take_while(|c| !matches!(c, ';' | '|' | '&' | '<' | '>' | '(' | ')' | '$' | '`'))
        .take(40)
        .collect();
    if name.is_empty() {
        "sh".to_string()
    } else {
        name
    }
}

/// Reads until EOF or until one byte past `cap` (which tells the caller it overflowed).
async fn read_capped(mut reader: impl AsyncRead + Unpin, cap: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    let _ = (&mut reader)
        .take(cap as u64 + 1)
        .read_to_end(&mut buf)
        .await;
    buf
}

/// Shortens text that goes into messages (helper commands can be long).
fn abbreviate(text: &str, max_chars: usize) -> String {
    let text = text.trim();
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max_chars).collect();
        format!("{cut}…")
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn helper(command: &str, timeout_ms: u64) -> Helper {
        Helper::new(
            command.to_string(),
            Duration::from_secs(300),
            Duration::from_millis(timeout_ms),
        )
    }

    /// The duration an error message reports after `marker` ("… after 1.02 s …").
    fn seconds_after(message: &str, marker: &str) -> f64 {
        message
            .split(marker)
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|number| number.parse().ok())
            .unwrap_or_else(|| panic!("no duration after `{marker}` in {message}"))
    }

    fn key_of(fetched: Fetched) -> String {
        let Material::Token(token) = fetched.material else {
            panic!("not a token")
        };
        token.secret().expose().to_string()
    }

    #[tokio::test]
    async fn trimmed_stdout_is_the_key() {
        let fetched = helper("printf '  sk-test-123\\n\\n'", 5000)
            .fetch()
            .await
            .unwrap();
        assert_eq!(fetched.lifetime, Lifetime::Ttl(Duration::from_secs(300)));
        assert_eq!(key_of(fetched), "sk-test-123");
    }

    #[tokio::test]
    async fn failure_names_program_status_and_duration_and_keeps_stderr_for_the_log() {
        let err = helper(
            "VAULT_TOKEN=hvs.SECRET echo sk-leaked-key; echo 'vault: denied sk-leaked-key' >&2; echo second >&2; exit 3",
            5000,
        )
        .fetch()
        .await
        .unwrap_err();
        assert_eq!(err.kind, super::super::FailureKind::Transient);
        let m = err.to_string();
        assert!(
            m.starts_with("helper `echo` exited with status 3 after "),
            "{m}"
        );
        assert!(seconds_after(&m, "after ") < 5.0, "{m}");
        assert!(
            m.ends_with("; what it printed is in credproxy's log"),
            "{m}"
        );
        assert!(!m.contains("SECRET") && !m.contains("vault"), "{m}");
        assert_eq!(
            err.diagnostic(),
            Some("its stderr began: vault: denied ** redacted **"),
            "stderr for the log, without what the helper printed on stdout"
        );
    }

    #[test]
    fn only_the_program_name_of_a_command_is_shown() {
        for (command, program) in [
            ("op read op://dev/anthropic/key", "op"),
            (
                "VAULT_TOKEN=hvs.abc vault kv get -field=key secret/x",
                "vault",
            ),
            ("env A=b /usr/local/bin/key-helper --flag", "key-helper"),
            ("cat ~/.config/anthropic/key", "cat"),
            ("echo x;cat y", "echo"),
            ("'/opt/helpers/run' --x", "sh"),
            ("TOKEN=\"abc def\" vault read x", "sh"),
            ("sk-ant-api03-0123456789abcdef0123456789", "sh"),
            ("$(secret-cmd)", "sh"),
            ("", "sh"),
        ] {
            assert_eq!(program_name(command), program, "{command}");
        }
    }

    #[tokio::test]
    async fn empty_and_multi_line_output_are_errors() {
        let empty = helper("printf '   \\n'", 5000).fetch().await.unwrap_err();
        assert!(empty.message().contains("printed nothing"), "{empty}");
        let two = helper("printf 'a\\nb\\n'", 5000).fetch().await.unwrap_err();
        assert!(two.message().contains("more than one line"), "{}", two);
    }

    #[tokio::test]
    async fn oversized_output_is_an_error() {
        let err = helper("head -c 70000 /dev/zero | tr '\\0' a", 5000)
            .fetch()
            .await
            .unwrap_err();
        assert!(
            err.message().contains("printed more than 64 KiB"),
            "{}",
            err
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        // The shell starts a grandchild that would outlive a kill of the shell alone.
        let command = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let err = helper(&command, 1000).fetch().await.unwrap_err();
        let took = seconds_after(err.message(), "timed out after ");
        assert!((1.0..30.0).contains(&took), "killed at its timeout: {err}");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Gone, or dead and waiting to be reaped (a zombie) by whoever adopted it.
        let is_gone = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        };
        // SIGKILL lands when the process is next scheduled: give it time.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !is_gone() {
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {pid} survived the helper timeout"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
