//! Browser tests: Debian's `chromium`, run headless as a real client. It trusts a CA only
//! through an NSS database made with `certutil` in a temporary `$HOME` (`.pki/nssdb`, where
//! chromium on Linux looks), runs in its own process group and is killed by PID with every
//! process it started; a tiny loopback HTTP server hands it the test page and takes the
//! result the page posts back.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// Fail the test with a clear message unless `chromium` and `certutil` run.
pub fn require_browser() {
    let hint =
        "scripts/test.sh installs them (ensure_browser: apt-get install chromium libnss3-tools)";
    match Command::new("chromium").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "this test needs Debian's chromium; `chromium --version` failed ({}): {}; {hint}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("this test needs Debian's chromium ({e}); {hint}"),
    }
    // `certutil -H` prints its help (and exits non-zero): only whether it runs matters
    if let Err(e) = Command::new("certutil").arg("-H").output() {
        panic!("this test needs certutil (Debian package libnss3-tools) ({e}); {hint}");
    }
}

/// Run certutil on the NSS database `db`; panics with its output when it fails.
fn certutil(db: &Path, args: &[&str]) -> String {
    let o = Command::new("certutil")
        .arg("-d")
        .arg(format!("sql:{}", db.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running certutil");
    assert!(
        o.status.success(),
        "certutil {args:?} on {} failed ({}): {}{}",
        db.display(),
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Make `home` a fresh `$HOME` for chromium whose NSS database (`home/.pki/nssdb`, empty
/// password) trusts each certificate of the PEM file `ca_pem` to identify TLS servers
/// (trust `C,,`); with `None` the database trusts nothing of ours. Returns `home`.
pub fn nss_home(home: &Path, ca_pem: Option<&Path>) -> PathBuf {
    let db = home.join(".pki").join("nssdb");
    std::fs::create_dir_all(&db).unwrap();
    certutil(&db, &["-N", "--empty-password"]);
    if let Some(ca_pem) = ca_pem {
        let pem = std::fs::read_to_string(ca_pem).unwrap();
        // certutil -A imports one certificate per call: split the bundle
        let end = "-----END CERTIFICATE-----";
        let certs: Vec<&str> = pem
            .split_inclusive(end)
            .filter(|c| c.contains("-----BEGIN CERTIFICATE-----"))
            .collect();
        assert!(
            !certs.is_empty(),
            "{} holds no certificate",
            ca_pem.display()
        );
        for (i, cert) in certs.iter().enumerate() {
            let file = home.join(format!("trusted-{i}.pem"));
            std::fs::write(&file, format!("{}\n", cert.trim())).unwrap();
            let nick = format!("test-ca-{i}");
            certutil(
                &db,
                &["-A", "-t", "C,,", "-n", &nick, "-i", file.to_str().unwrap()],
            );
            let listed = certutil(&db, &["-L"]);
            assert!(listed.contains(&nick), "certutil -L: {listed}");
        }
    }
    home.to_path_buf()
}

/// One headless chromium showing one page, with `$HOME` set to a directory made by
/// [`nss_home`]. Its processes are killed when it is stopped or dropped (also on panic).
pub struct Chromium {
    child: Child,
    home: PathBuf,
    log: PathBuf,
    stopped: bool,
}

impl Chromium {
    /// Start chromium on `url`. Its stdout and stderr go to `home/chromium.log`.
    pub fn start(home: &Path, url: &str) -> Chromium {
        let log = home.join("chromium.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        // its temporary files too stay in the test's directory (a killed chromium leaves them)
        let tmp = home.join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let mut cmd = Command::new("chromium");
        cmd.env("HOME", home)
            .env("TMPDIR", &tmp)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .args([
                "--headless",
                // the tests run as root, where chromium refuses to start with its sandbox;
                // this is the process sandbox only: certificates are verified as always
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--password-store=basic",
                // page console messages and network errors on stderr (the log file)
                "--enable-logging=stderr",
            ])
            .arg(format!(
                "--user-data-dir={}",
                home.join("profile").display()
            ))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // its own process group: one kill reaches the zygotes, renderers and helpers
            .process_group(0);
        let child = cmd.spawn().expect("starting chromium");
        Chromium {
            child,
            home: home.to_path_buf(),
            log,
            stopped: false,
        }
    }

    /// Its exit status, once the browser process itself has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The log so far, without the D-Bus complaints of a machine without a session bus.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("dbus") && !l.contains("DBus"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Kill the process group, reap the leader, then kill by PID any process still naming
    /// this run's `$HOME` (chromium's crash handler starts its own session). Returns the
    /// PIDs still alive after 10 s (empty when everything is gone).
    pub fn stop(&mut self) -> Vec<i32> {
        if self.stopped {
            return Vec::new();
        }
        self.stopped = true;
        let pgid = self.child.id() as i32;
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let marker = self.home.to_string_lossy().into_owned();
        let mut left = Vec::new();
        for _ in 0..100 {
            left = processes_naming(&marker);
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in &left {
                // SAFETY: as above, one PID found under /proc naming this run's directory
                unsafe {
                    libc::kill(*pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        left
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // no panic here: dropping during a test's panic would abort the process
        let left = self.stop();
        if !left.is_empty() {
            eprintln!("chromium processes still alive after kill: {left:?}");
        }
    }
}

/// PIDs of live processes whose command line contains `marker`.
fn processes_naming(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            // a zombie has an empty command line: it holds nothing and is not matched
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

/// A loopback HTTP server for one browser test: `GET /` answers the page, `POST /result`
/// hands its body to [`PageServer::result`]; anything else is 404. It stops when dropped,
/// or after 10 minutes at the latest.
pub struct PageServer {
    port: u16,
    stop: Arc<AtomicBool>,
    results: mpsc::Receiver<String>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PageServer {
    /// Serve `page` (HTML) on a free port of 127.0.0.1.
    pub fn start(page: String) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, results) = mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => match serve_one(conn, &page, &tx) {
                        // chromium opens spare connections it may close unused
                        Ok(()) | Err(Served::Unused) => {}
                        Err(Served::Failed(e)) => eprintln!("page server: {e}"),
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(e) => {
                        eprintln!("page server: accept: {e}");
                        std::thread::sleep(Duration::from_millis(20))
                    }
                }
            }
        });
        PageServer {
            port,
            stop,
            results,
            thread: Some(thread),
        }
    }

    /// URL of the page.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The first result the page posts within `within`, if any.
    pub fn result(&self, within: Duration) -> Option<String> {
        self.results.recv_timeout(within).ok()
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Why a connection of the page server was not served.
enum Served {
    /// Closed by the browser before it sent anything.
    Unused,
    /// Anything else.
    Failed(std::io::Error),
}

impl From<std::io::Error> for Served {
    fn from(e: std::io::Error) -> Served {
        Served::Failed(e)
    }
}

/// Answer one HTTP/1.1 request on `conn` and close it.
fn serve_one(mut conn: TcpStream, page: &str, tx: &mpsc::Sender<String>) -> Result<(), Served> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(std::io::Error::other("request head over 64 KiB").into());
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 && buf.is_empty() {
            return Err(Served::Unused);
        }
        if n == 0 {
            return Err(std::io::Error::other("connection closed in the request head").into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    if length > 16 * 1024 * 1024 {
        return Err(std::io::Error::other("request body over 16 MiB").into());
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::other("connection closed in the body").into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let (status, kind, content) = match (method, path) {
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", page.as_bytes()),
        ("POST", "/result") => {
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
            ("204 No Content", "text/plain", &b""[..])
        }
        _ => ("404 Not Found", "text/plain", &b"not found"[..]),
    };
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        content.len()
    )?;
    conn.write_all(content)?;
    Ok(conn.flush()?)
}
