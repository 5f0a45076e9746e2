//! The `mysql` role: a tiny database that keeps rows in `<data dir>/rows`, one line each,
//! appended and fsynced before the answer, so that what a client was told is written
//! survives a restart, an update and a rollback of the service (its data folder is a
//! volume). Line protocol on plain TCP, one command per line:
//!
//! ```text
//! PING            -> PONG
//! INSERT <text>   -> OK <rows now stored>      (text: one line, at most 1 KiB)
//! SELECT          -> ROW <text> per row, then END <count>
//! anything else   -> ERR <why>
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest row accepted.
pub const MAX_ROW: usize = 1024;

/// A parsed command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// `PING`.
    Ping,
    /// `INSERT <text>`.
    Insert(String),
    /// `SELECT`.
    Select,
}

/// Parse one line (without its newline).
pub fn parse(line: &str) -> Result<Command, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match (word, rest) {
        ("PING", "") => Ok(Command::Ping),
        ("SELECT", "") => Ok(Command::Select),
        ("INSERT", "") => Err("INSERT needs a row".into()),
        ("INSERT", row) if row.len() > MAX_ROW => Err(format!("row longer than {MAX_ROW} bytes")),
        ("INSERT", row) => Ok(Command::Insert(row.to_string())),
        _ => Err(format!(
            "unknown command {:?} (PING, INSERT <text>, SELECT)",
            word
        )),
    }
}

/// The rows file, opened for appending.
pub struct Rows {
    path: PathBuf,
    file: std::fs::File,
    count: usize,
}

/// Rows of a file's content: complete lines only (a line cut by a crash mid-write was never
/// acknowledged, so it does not count).
pub fn rows_of(data: &[u8]) -> Vec<String> {
    let complete = match data.iter().rposition(|&b| b == b'\n') {
        Some(i) => &data[..=i],
        None => &[][..],
    };
    complete
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

impl Rows {
    /// Open (creating the folder and file) `<dir>/rows`; a cut last line is dropped.
    pub fn open(dir: &Path) -> Result<Rows> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("STANDIN_DATA_DIR: creating {}", dir.display()))?;
        let path = dir.join("rows");
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("STANDIN_DATA_DIR: reading {}", path.display()))
            }
        };
        let rows = rows_of(&data);
        let keep = data.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("STANDIN_DATA_DIR: opening {} for writing", path.display()))?;
        if keep < data.len() {
            file.set_len(keep as u64)
                .with_context(|| format!("truncating the cut last row of {}", path.display()))?;
        }
        file.sync_all()
            .with_context(|| format!("STANDIN_DATA_DIR: syncing {}", path.display()))?;
        Ok(Rows {
            path,
            file,
            count: rows.len(),
        })
    }

    /// Append a row and fsync; the number of rows stored.
    pub fn insert(&mut self, row: &str) -> Result<usize> {
        let mut line = row.as_bytes().to_vec();
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.count += 1;
        Ok(self.count)
    }

    /// Every stored row, in order.
    pub fn select(&self) -> Result<Vec<String>> {
        let data = std::fs::read(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        Ok(rows_of(&data))
    }

    /// Rows stored.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// Serve one client until it closes (or has sent 1 MiB: a stand-in needs no more).
pub async fn serve_client(stream: TcpStream, rows: Arc<Mutex<Rows>>) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).take(1 << 20).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match parse(&line) {
            Ok(Command::Ping) => "PONG\n".to_string(),
            Ok(Command::Insert(row)) => {
                let rows = rows.clone();
                let res = tokio::task::spawn_blocking(move || {
                    rows.lock()
                        .map_err(|_| anyhow::anyhow!("row store poisoned"))?
                        .insert(&row)
                })
                .await?;
                match res {
                    Ok(n) => format!("OK {n}\n"),
                    Err(e) => format!("ERR {e:#}\n"),
                }
            }
            Ok(Command::Select) => {
                let res = rows
                    .lock()
                    .map_err(|_| anyhow::anyhow!("row store poisoned"))
                    .and_then(|r| r.select());
                match res {
                    Ok(all) => {
                        let mut s = String::new();
                        for row in &all {
                            s.push_str("ROW ");
                            s.push_str(row);
                            s.push('\n');
                        }
                        s.push_str(&format!("END {}\n", all.len()));
                        s
                    }
                    Err(e) => format!("ERR {e:#}\n"),
                }
            }
            Err(why) => format!("ERR {why}\n"),
        };
        w.write_all(reply.as_bytes()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse("PING"), Ok(Command::Ping));
        assert_eq!(parse("SELECT\r"), Ok(Command::Select));
        assert_eq!(
            parse("INSERT before update"),
            Ok(Command::Insert("before update".into()))
        );
        assert_eq!(parse("INSERT"), Err("INSERT needs a row".into()));
        assert!(parse(&format!("INSERT {}", "x".repeat(MAX_ROW + 1)))
            .unwrap_err()
            .starts_with("row longer"));
        assert_eq!(
            parse("DROP TABLE"),
            Err("unknown command \"DROP\" (PING, INSERT <text>, SELECT)".into())
        );
    }

    #[test]
    fn rows_persist_across_reopening_and_a_cut_line_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("data");
        {
            let mut r = Rows::open(&dir).unwrap();
            assert_eq!(r.insert("one").unwrap(), 1);
            assert_eq!(r.insert("two").unwrap(), 2);
        }
        // a crash in the middle of a third write
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("rows"))
            .unwrap();
        f.write_all(b"thr").unwrap();
        drop(f);
        let mut r = Rows::open(&dir).unwrap();
        assert_eq!(r.count(), 2);
        assert_eq!(r.select().unwrap(), ["one", "two"]);
        assert_eq!(r.insert("three").unwrap(), 3);
        assert_eq!(
            std::fs::read_to_string(dir.join("rows")).unwrap(),
            "one\ntwo\nthree\n"
        );
    }

    #[test]
    fn an_unusable_data_folder_names_the_variable() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let e = Rows::open(&file).err().unwrap();
        assert!(
            format!("{e:#}").starts_with("STANDIN_DATA_DIR: creating"),
            "{e:#}"
        );
    }
}
