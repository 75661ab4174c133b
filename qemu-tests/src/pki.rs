//! A throwaway PKI for mutual-TLS tests, made with `openssl` in a directory: a CA with a
//! server and a client certificate (both for 127.0.0.1 and localhost), and an unrelated CA
//! with an `intruder` client. Each `NAME` is `NAME.crt` + `NAME.key` (PEM, P-256).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, Result};

/// Names of the certificates [`Pki::create`] makes.
pub const CA: &str = "ca";
pub const SERVER: &str = "server";
pub const CLIENT: &str = "client";
pub const OTHER_CA: &str = "other-ca";
pub const INTRUDER: &str = "intruder";

pub struct Pki {
    pub dir: PathBuf,
}

const KEY: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

impl Pki {
    /// Makes every certificate in `dir` (created if needed).
    pub fn create(dir: &Path) -> Result<Pki> {
        std::fs::create_dir_all(dir).map_err(io_err(dir.display().to_string()))?;
        let pki = Pki {
            dir: dir.to_path_buf(),
        };
        pki.ca(CA)?;
        pki.leaf(CA, SERVER)?;
        pki.leaf(CA, CLIENT)?;
        pki.ca(OTHER_CA)?;
        pki.leaf(OTHER_CA, INTRUDER)?;
        Ok(pki)
    }

    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.crt"))
    }

    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    /// The PEM text of `NAME.crt` or `NAME.key` (`file` names the file).
    pub fn pem(&self, file: &str) -> Result<String> {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).map_err(io_err(path.display().to_string()))
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        crate::run_tool(Command::new("openssl").current_dir(&self.dir).args(args)).map(drop)
    }

    /// A self-signed CA.
    fn ca(&self, name: &str) -> Result<()> {
        let (crt, key, subj) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("/CN={name}"),
        );
        let mut args = vec!["req", "-x509", "-nodes", "-days", "3650", "-subj", &subj];
        args.extend(KEY);
        args.extend(["-keyout", &key, "-out", &crt]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        self.openssl(&args)
    }

    /// A server-and-client certificate for 127.0.0.1 and localhost, issued by `issuer`.
    fn leaf(&self, issuer: &str, name: &str) -> Result<()> {
        let (crt, key, csr, subj) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("/CN={name}"),
        );
        let mut args = vec!["req", "-new", "-nodes", "-subj", &subj];
        args.extend(KEY);
        args.extend(["-keyout", &key, "-out", &csr]);
        self.openssl(&args)?;
        let ext = format!("{name}.ext");
        let ext_path = self.dir.join(&ext);
        std::fs::write(
            &ext_path,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .map_err(io_err(ext_path.display().to_string()))?;
        let (ca_crt, ca_key) = (format!("{issuer}.crt"), format!("{issuer}.key"));
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-days",
            "3650",
            "-out",
            &crt,
            "-extfile",
            &ext,
        ])
    }
}
