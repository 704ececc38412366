//! Another process running memo, driven line by line over its standard
//! input and output (the `hot_key_peer` binary): for what only a second
//! process shows, such as invalidations reaching another process's local
//! copy and one refresh across processes.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A peer process, killed when dropped.
#[derive(Debug)]
pub struct Peer {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Peer {
    /// Starts `binary` (an integration test passes
    /// `env!("CARGO_BIN_EXE_hot_key_peer")`, which only it can name) with
    /// `MEMO_CACHE_URL` set to `url`.
    pub fn start(binary: &str, url: &str) -> Peer {
        let mut child = Command::new(binary)
            .env("MEMO_CACHE_URL", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the peer process");
        let input = child.stdin.take().expect("piped");
        let output = BufReader::new(child.stdout.take().expect("piped"));
        Peer {
            child,
            input,
            output,
        }
    }

    /// Sends one command line and returns the peer's one-line answer.
    pub fn ask(&mut self, line: &str) -> String {
        self.send(line);
        self.answer()
    }

    /// Sends one command line without waiting for its answer.
    pub fn send(&mut self, line: &str) {
        writeln!(self.input, "{line}").expect("the peer reads its input");
        self.input.flush().expect("the peer reads its input");
    }

    /// Waits for the peer's next one-line answer.
    pub fn answer(&mut self) -> String {
        let mut answer = String::new();
        self.output
            .read_line(&mut answer)
            .expect("the peer answers");
        answer.trim().to_owned()
    }
}

impl Peer {
    /// Kills the peer at once, whatever it is doing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
