//! A real nginx in a namespace, as the seed's WAF: listens on 8080 and
//! proxies every request to `http://NAME:3000`, resolving NAME at request
//! time through the agent's DNS; and curl to ask it.

use std::process::{Child, Command, Stdio};

use crate::Namespace;

/// A real nginx inside a namespace; killed on drop.
pub struct Nginx(Child, std::path::PathBuf);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers before exiting (SIGKILL
        // would orphan them).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

pub fn nginx(ns: &Namespace, upstream_name: &str) -> Nginx {
    let dir =
        std::env::temp_dir().join(format!("pn-test-{}-nginx-{}", std::process::id(), ns.name));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.display();
    // A variable in proxy_pass makes nginx resolve the name at request time,
    // through `resolver`, and round-robin over every address it gets.
    let conf = format!(
        r#"user root;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    resolver 169.254.1.1 valid=5s ipv6=off;
    server {{
        listen 8080;
        location / {{
            set $backend "http://{upstream_name}:3000";
            proxy_pass $backend;
        }}
    }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nginx", "-c"])
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nginx (Debian package nginx-light)");
    Nginx(child, dir)
}

pub fn curl(ns: &Namespace, url: &str) -> Option<String> {
    let out = ns.exec(&["curl", "-s", "--max-time", "3", url]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
