//! Recipes: the TOML files under `recipes/` and the appliance definitions under `bundles/`,
//! parsed into typed data with file:line errors. First step of the build flow
//! (recipe → store → oci/bundle); nothing here touches the store or runs a build.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// A value with its byte span in the recipe file, so later checks can name the line.
pub type S<T> = Spanned<T>;

/// One parsed recipe file.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// Name: the file stem (`recipes/relay-image.toml` → `relay-image`).
    pub name: String,
    /// The file it came from.
    pub path: PathBuf,
    /// Its text, kept to turn spans into line numbers.
    pub text: String,
    /// What it builds.
    pub kind: RecipeKind,
}

/// The kinds of derivation a recipe can describe.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RecipeKind {
    /// A static executable built by cargo from a crate of this workspace.
    Binary(BinaryRecipe),
    /// An external input pinned by sha256 (a vendor's `docker save` tar, any file).
    Fixed(FixedRecipe),
    /// An OCI image written without any Docker daemon.
    Image(Box<ImageRecipe>),
    /// A compose v3 stack template whose image fields are filled with built images.
    Stack(StackRecipe),
}

impl RecipeKind {
    /// Short kind name, as written in the TOML.
    pub fn name(&self) -> &'static str {
        match self {
            RecipeKind::Binary(_) => "binary",
            RecipeKind::Fixed(_) => "fixed",
            RecipeKind::Image(_) => "image",
            RecipeKind::Stack(_) => "stack",
        }
    }

    /// "a binary recipe", "an image recipe", … for messages.
    pub fn described(&self) -> String {
        match self.name() {
            n @ "image" => format!("an {n} recipe"),
            n => format!("a {n} recipe"),
        }
    }
}

/// `kind = "binary"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BinaryRecipe {
    /// Recipe kind, as written (`kind = "..."`).
    pub kind: String,
    /// Workspace root (folder with the workspace Cargo.toml), relative to the recipe file.
    pub workspace: S<String>,
    /// Cargo package name.
    pub package: String,
    /// Binary target name.
    pub bin: String,
    /// Files and folders (relative to the workspace) whose content is this build's input.
    pub sources: Vec<S<String>>,
}

/// `kind = "fixed"`: a fixed-output input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedRecipe {
    /// Recipe kind, as written (`kind = "..."`).
    pub kind: String,
    /// File path, relative to the recipe file (or absolute).
    pub path: S<String>,
    /// Expected sha256 (64 lowercase hex).
    pub sha256: S<String>,
    /// How the file is used.
    #[serde(default)]
    pub format: FixedFormat,
}

/// What a fixed-output input contains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FixedFormat {
    /// Any file, used as a layer entry.
    #[default]
    File,
    /// A `docker save` archive (manifest.json + config + layers), usable as an image base.
    DockerArchive,
}

/// `kind = "image"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecipe {
    /// Recipe kind, as written (`kind = "..."`).
    pub kind: String,
    /// Repository, e.g. `reemo/ws-relay-server`.
    pub repository: String,
    /// Version; the tag is `<version>-<hash12>`.
    pub version: String,
    /// Optional base image: a `fixed` recipe with `format = "docker-archive"`.
    #[serde(default)]
    pub base: Option<S<String>>,
    /// Root filesystem from pinned Debian packages (below the layers), locked in
    /// `<recipe>.lock.json`.
    #[serde(default)]
    pub debian: Option<DebianSpec>,
    /// Layers added on top of the base, in order.
    #[serde(default, rename = "layer")]
    pub layers: Vec<LayerSpec>,
    /// Image configuration.
    #[serde(default)]
    pub config: ImageConfig,
    /// Extra OCI annotations / labels (`revision`, `source`, …).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `[debian]` of an image recipe: what to take from the Debian archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSpec {
    /// Suites, in order of preference for equal versions (`bookworm`, `bookworm-security`).
    pub suites: Vec<String>,
    /// Components (default `main`).
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// Architecture (default `amd64`).
    #[serde(default = "default_arch")]
    pub architecture: String,
    /// Packages wanted; their Depends and Pre-Depends closure is installed.
    pub packages: Vec<S<String>>,
    /// Packages never installed (maintainer-script-only dependencies); a dependency naming
    /// one is left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Essential packages the program needs at run time (never pulled in as dependencies).
    #[serde(default)]
    pub essential: Vec<String>,
    /// Packages of the closure put in a lower layer of their own, so images share it.
    #[serde(default)]
    pub base: Vec<S<String>>,
    /// Keyring that verifies the suites (default the Debian archive keyring).
    #[serde(default)]
    pub keyring: Option<S<String>>,
    /// Users written to `/etc/passwd` (root is always there).
    #[serde(default, rename = "user")]
    pub users: Vec<DebianUser>,
    /// Groups written to `/etc/group` (root, and each user's group, are always there).
    #[serde(default, rename = "group")]
    pub groups: Vec<DebianGroup>,
    /// Folders created with an owner and mode (`/run/haproxy`, `/var/lib/mysql`).
    #[serde(default, rename = "dir")]
    pub dirs: Vec<DebianDir>,
    /// Path prefixes whose ELF files are not checked for missing libraries (optional
    /// plugins whose libraries the recipe leaves out on purpose).
    #[serde(default)]
    pub elf_check_skip: Vec<String>,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}

fn default_arch() -> String {
    "amd64".into()
}

/// Default keyring of `[debian]`.
pub const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

impl DebianSpec {
    /// The keyring path as written (relative paths resolve against the recipe folder).
    pub fn keyring_text(&self) -> String {
        self.keyring
            .as_ref()
            .map_or(DEFAULT_KEYRING.to_string(), |k| k.get_ref().clone())
    }
}

/// A user of `[debian]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianUser {
    /// Login name.
    pub name: S<String>,
    /// uid.
    pub uid: u32,
    /// Primary gid (default: the uid); a group of the user's name is added when no
    /// declared group has this gid.
    #[serde(default)]
    pub gid: Option<u32>,
    /// Home folder (default `/nonexistent`).
    #[serde(default)]
    pub home: Option<String>,
    /// Shell (default `/usr/sbin/nologin`).
    #[serde(default)]
    pub shell: Option<String>,
}

/// A group of `[debian]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianGroup {
    /// Group name.
    pub name: S<String>,
    /// gid.
    pub gid: u32,
    /// Members.
    #[serde(default)]
    pub members: Vec<String>,
}

/// A runtime folder of `[debian]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianDir {
    /// Absolute path.
    pub path: S<String>,
    /// Owner: a declared user name, `root`, or a number (default root).
    #[serde(default)]
    pub owner: Option<S<String>>,
    /// Group: a declared group or user name, `root`, or a number (default the owner's).
    #[serde(default)]
    pub group: Option<S<String>>,
    /// Permission bits (default 0o755).
    #[serde(default)]
    pub mode: Option<u32>,
}

/// One layer: a list of entries.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// Entries of the layer.
    pub entries: Vec<LayerEntry>,
}

/// One file or folder of a layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerEntry {
    /// Absolute destination inside the image.
    pub dest: S<String>,
    /// A file of the repo, relative to the recipe file.
    #[serde(default)]
    pub file: Option<S<String>>,
    /// The output of another recipe (a binary or a fixed file).
    #[serde(default)]
    pub recipe: Option<S<String>>,
    /// Inline text content.
    #[serde(default)]
    pub text: Option<String>,
    /// An empty folder.
    #[serde(default)]
    pub dir: bool,
    /// Permission bits (default 0o644 for files, 0o755 for folders and binaries).
    #[serde(default)]
    pub mode: Option<u32>,
    /// Owner uid (default 0).
    #[serde(default)]
    pub uid: u64,
    /// Owner gid (default 0).
    #[serde(default)]
    pub gid: u64,
}

/// Image configuration, as in the OCI image config / Dockerfile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// ENTRYPOINT.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// CMD.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// ENV.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// USER.
    #[serde(default)]
    pub user: Option<String>,
    /// WORKDIR.
    #[serde(default)]
    pub workdir: Option<String>,
    /// EXPOSE, e.g. `["8080/tcp"]`.
    #[serde(default)]
    pub exposed_ports: Vec<String>,
    /// LABEL.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// HEALTHCHECK.
    #[serde(default)]
    pub healthcheck: Option<HealthcheckSpec>,
    /// STOPSIGNAL.
    #[serde(default)]
    pub stop_signal: Option<String>,
}

/// Docker healthcheck.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthcheckSpec {
    /// `["CMD", …]` or `["NONE"]`.
    pub test: Vec<String>,
    /// e.g. `"10s"`.
    #[serde(default)]
    pub interval: Option<S<String>>,
    /// e.g. `"3s"`.
    #[serde(default)]
    pub timeout: Option<S<String>>,
    /// e.g. `"5s"`.
    #[serde(default)]
    pub start_period: Option<S<String>>,
    /// Consecutive failures before unhealthy.
    #[serde(default)]
    pub retries: Option<u32>,
}

/// `kind = "stack"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackRecipe {
    /// Recipe kind, as written (`kind = "..."`).
    pub kind: String,
    /// Compose v3 template, relative to the recipe file; `${image:NAME}` is replaced with the
    /// reference of image recipe NAME.
    pub template: S<String>,
    /// Config files copied to `configs/<key>` in the bundle (source relative to the recipe).
    #[serde(default)]
    pub configs: BTreeMap<String, S<String>>,
    /// Site parameters the template uses as `${NAME}` (set on the host per site).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, S<ParamDecl>>,
    /// Config keys allowed to carry a PEM private key (refused otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_private_keys: Vec<String>,
}

/// `[parameters.NAME]` of a stack recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamDecl {
    /// `string`, `hostname`, `ip`, `cidr-list`, `port`, `integer`, `boolean`, `duration`.
    #[serde(rename = "type")]
    pub kind: crate::site::ParamType,
    /// Default value (a string, integer or boolean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<toml::Value>,
    /// A site must give a value (then there is no default).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// Masked wherever values are shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
    /// What it is for (shown by `inspect`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl StackRecipe {
    /// The declared parameters, checked (names, defaults of their type), in name order.
    pub fn parameters(&self, r: &Recipe) -> Result<Vec<crate::site::Parameter>> {
        let mut out = Vec::new();
        for (name, decl) in &self.parameters {
            let d = decl.get_ref();
            let default = d
                .default
                .as_ref()
                .map(crate::site::toml_text)
                .transpose()
                .map_err(|e| r.err_at(decl, format!("parameter {name}: default: {e}")))?;
            let p = crate::site::Parameter {
                name: name.clone(),
                kind: d.kind,
                default,
                required: d.required,
                secret: d.secret,
                description: d.description.clone(),
            };
            out.push(crate::site::check_declaration(&p).map_err(|e| r.err_at(decl, e))?);
        }
        Ok(out)
    }
}

/// An appliance definition (`bundles/NAME.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleDef {
    /// Appliance name.
    pub name: String,
    /// Appliance version.
    pub version: String,
    /// Swarm stack name.
    pub stack_name: String,
    /// The stack recipe.
    pub stack: S<String>,
    /// Folders searched for recipes, relative to this file, in order.
    #[serde(default = "default_recipe_dirs")]
    pub recipes: Vec<String>,
    /// Executables shipped under `bin/`: file name → binary recipe.
    #[serde(default)]
    pub binaries: BTreeMap<String, S<String>>,
    /// Pinned component versions (like the seeds' `DOCKER_VERSION_*`).
    #[serde(default)]
    pub pinned: BTreeMap<String, String>,
}

fn default_recipe_dirs() -> Vec<String> {
    vec!["../recipes".into()]
}

/// An appliance definition with where it came from.
#[derive(Debug, Clone)]
pub struct LoadedBundleDef {
    /// Parsed content.
    pub def: BundleDef,
    /// File path.
    pub path: PathBuf,
    /// File text (for line numbers).
    pub text: String,
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// `file:line: message` for a spanned value.
pub fn at<T>(path: &Path, text: &str, v: &S<T>, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!(
        "{}:{}: {msg}",
        path.display(),
        line_of(text, v.span().start)
    )
}

fn parse_toml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        anyhow::anyhow!("{}:{line}: {}", path.display(), e.message().trim_end())
    })
}

/// Read `kind` first, then parse the whole file as that kind's struct (so that spans work
/// and unknown fields are reported with their line).
fn parse_kind(path: &Path, text: &str) -> Result<RecipeKind> {
    let table: toml::Table = parse_toml(path, text)?;
    let kind = match table.get("kind") {
        Some(toml::Value::String(k)) => k.clone(),
        Some(_) => bail!("{}: kind must be a string", path.display()),
        None => bail!(
            "{}:1: missing field `kind` (binary, fixed, image or stack)",
            path.display()
        ),
    };
    Ok(match kind.as_str() {
        "binary" => RecipeKind::Binary(parse_toml(path, text)?),
        "fixed" => RecipeKind::Fixed(parse_toml(path, text)?),
        "image" => RecipeKind::Image(parse_toml(path, text)?),
        "stack" => RecipeKind::Stack(parse_toml(path, text)?),
        other => {
            let line = text
                .lines()
                .position(|l| l.trim_start().starts_with("kind"))
                .map_or(1, |i| i + 1);
            bail!(
                "{}:{line}: unknown recipe kind {other:?} (binary, fixed, image or stack)",
                path.display()
            )
        }
    })
}

impl Recipe {
    /// Parse a recipe file; the name is the file stem.
    pub fn load(path: &Path) -> Result<Recipe> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading recipe {}", path.display()))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("recipe file name {} is not UTF-8", path.display()))?
            .to_string();
        let kind = parse_kind(path, &text)?;
        let r = Recipe {
            name,
            path: path.to_path_buf(),
            text,
            kind,
        };
        r.check()?;
        Ok(r)
    }

    /// `file:line: message` for a spanned field of this recipe.
    pub fn err_at<T>(&self, v: &S<T>, msg: impl std::fmt::Display) -> anyhow::Error {
        at(&self.path, &self.text, v, msg)
    }

    /// Folder of the recipe file (relative paths resolve against it).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Checks that need no other file: destinations, modes, hashes, durations.
    fn check(&self) -> Result<()> {
        match &self.kind {
            RecipeKind::Fixed(f) => {
                let h = f.sha256.get_ref();
                if h.len() != 64
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    return Err(self.err_at(&f.sha256, "sha256 must be 64 lowercase hex digits"));
                }
            }
            RecipeKind::Image(img) => {
                for layer in &img.layers {
                    for e in &layer.entries {
                        normalize_dest(e.dest.get_ref()).map_err(|m| self.err_at(&e.dest, m))?;
                        let sources = e.file.is_some() as u8
                            + e.recipe.is_some() as u8
                            + e.text.is_some() as u8
                            + e.dir as u8;
                        if sources != 1 {
                            return Err(self.err_at(
                                &e.dest,
                                "a layer entry needs exactly one of file, recipe, text or dir",
                            ));
                        }
                        if e.mode.is_some_and(|m| m > 0o7777) {
                            return Err(self.err_at(&e.dest, "mode must be at most 0o7777"));
                        }
                    }
                }
                if let Some(d) = &img.debian {
                    self.check_debian(d)?;
                }
                if let Some(h) = &img.config.healthcheck {
                    for d in [&h.interval, &h.timeout, &h.start_period]
                        .into_iter()
                        .flatten()
                    {
                        crate::stack::parse_duration(d.get_ref())
                            .map_err(|e| self.err_at(d, format!("{e:#}")))?;
                    }
                }
                if img.repository.is_empty()
                    || !img.repository.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)
                    })
                {
                    bail!(
                        "{}: repository {:?} must be lowercase letters, digits and ._-/",
                        self.path.display(),
                        img.repository
                    );
                }
            }
            RecipeKind::Stack(st) => {
                st.parameters(self)?;
            }
            RecipeKind::Binary(_) => {}
        }
        Ok(())
    }
}

impl Recipe {
    fn check_debian(&self, d: &DebianSpec) -> Result<()> {
        let here = || format!("{}: [debian]", self.path.display());
        if d.suites.is_empty() {
            bail!("{}: suites must name at least one suite", here());
        }
        if d.packages.is_empty() {
            bail!("{}: packages must name at least one package", here());
        }
        for p in &d.packages {
            if d.exclude.contains(p.get_ref()) {
                return Err(self.err_at(p, format!("package {:?} is also excluded", p.get_ref())));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for u in &d.users {
            if !seen.insert(u.name.get_ref().clone()) || u.name.get_ref() == "root" {
                return Err(self.err_at(
                    &u.name,
                    format!(
                        "user {:?} is declared twice (root is always there)",
                        u.name.get_ref()
                    ),
                ));
            }
        }
        for dir in &d.dirs {
            normalize_dest(dir.path.get_ref()).map_err(|m| self.err_at(&dir.path, m))?;
            if dir.mode.is_some_and(|m| m > 0o7777) {
                return Err(self.err_at(&dir.path, "mode must be at most 0o7777"));
            }
            for who in [&dir.owner, &dir.group].into_iter().flatten() {
                let w = who.get_ref();
                let known = w == "root"
                    || w.parse::<u32>().is_ok()
                    || d.users.iter().any(|u| u.name.get_ref() == w)
                    || d.groups.iter().any(|g| g.name.get_ref() == w);
                if !known {
                    return Err(self.err_at(who, format!("unknown user or group {w:?} (declare it in [[debian.user]] or [[debian.group]])")));
                }
            }
        }
        Ok(())
    }
}

impl LoadedBundleDef {
    /// Parse an appliance definition.
    pub fn load(path: &Path) -> Result<LoadedBundleDef> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading bundle definition {}", path.display()))?;
        let def: BundleDef = parse_toml(path, &text)?;
        Ok(LoadedBundleDef {
            def,
            path: path.to_path_buf(),
            text,
        })
    }

    /// Folders searched for recipes.
    pub fn recipe_dirs(&self) -> Vec<PathBuf> {
        let base = self.path.parent().unwrap_or(Path::new("."));
        self.def
            .recipes
            .iter()
            .map(|d| crate::fsutil::normalize(&base.join(d)))
            .collect()
    }
}

/// Normalise an absolute in-image destination to a relative tar path (`/usr/bin/x` →
/// `usr/bin/x`); rejects anything that would leave the image root.
pub fn normalize_dest(dest: &str) -> std::result::Result<String, String> {
    if !dest.starts_with('/') {
        return Err(format!(
            "layer destination {dest:?} must be an absolute path"
        ));
    }
    let mut parts = Vec::new();
    for c in Path::new(dest).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => parts.push(
                p.to_str()
                    .ok_or_else(|| format!("layer destination {dest:?} is not UTF-8"))?,
            ),
            Component::ParentDir => {
                return Err(format!("layer destination {dest:?} escapes the image root"))
            }
            Component::Prefix(_) => return Err(format!("layer destination {dest:?} is invalid")),
        }
    }
    if parts.is_empty() {
        return Err(format!("layer destination {dest:?} is the image root"));
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn destinations() {
        assert_eq!(
            normalize_dest("/usr/local/bin/x").unwrap(),
            "usr/local/bin/x"
        );
        assert_eq!(normalize_dest("/a/./b").unwrap(), "a/b");
        assert!(normalize_dest("relative").is_err());
        assert!(normalize_dest("/../etc/passwd")
            .unwrap_err()
            .contains("escapes the image root"));
        assert!(normalize_dest("/a/../../b").is_err());
        assert!(normalize_dest("/").is_err());
    }

    #[test]
    fn malformed_toml_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "x.toml",
            "kind = \"fixed\"\npath = \"a\"\nsha256 = \n",
        );
        let e = Recipe::load(&p).unwrap_err().to_string();
        assert!(e.contains("x.toml:3:"), "{e}");
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "img.toml",
            "kind = \"image\"\nrepository = \"a/b\"\nversion = \"1\"\n[config]\nentrypont = [\"x\"]\n",
        );
        let e = Recipe::load(&p).unwrap_err().to_string();
        assert!(e.contains("img.toml:5:"), "{e}");
        assert!(e.contains("entrypont"), "{e}");
    }

    #[test]
    fn escaping_destination_names_line() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "img.toml",
            "kind = \"image\"\nrepository = \"a/b\"\nversion = \"1\"\n\n[[layer]]\nentries = [\n  { dest = \"/../../etc/shadow\", text = \"x\" },\n]\n",
        );
        let e = Recipe::load(&p).unwrap_err().to_string();
        assert!(e.contains("img.toml:7:"), "{e}");
        assert!(e.contains("escapes the image root"), "{e}");
    }

    #[test]
    fn debian_section_errors_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        let head = "kind = \"image\"\nrepository = \"a/b\"\nversion = \"1\"\n[debian]\nsuites = [\"bookworm\"]\n";
        for (rest, want) in [
            (
                "packages = [\"x\"]\n[[debian.dir]]\npath = \"/run/x\"\nowner = \"nobody\"\n",
                "d.toml:9: unknown user or group \"nobody\"",
            ),
            (
                "packages = [\"x\"]\nexclude = [\"x\"]\n",
                "d.toml:6: package \"x\" is also excluded",
            ),
            (
                "packages = [\"x\"]\nsuits = []\n",
                "d.toml:7: unknown field `suits`",
            ),
            ("packages = []\n", "packages must name at least one package"),
            (
                "packages = [\"x\"]\n[[debian.dir]]\npath = \"/../x\"\n",
                "d.toml:8: layer destination \"/../x\" escapes the image root",
            ),
        ] {
            let p = write(d.path(), "d.toml", &format!("{head}{rest}"));
            let e = Recipe::load(&p).unwrap_err().to_string();
            assert!(e.contains(want), "{rest}: {e}");
        }
    }

    #[test]
    fn bad_fixed_hash_format() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "f.toml",
            "kind = \"fixed\"\npath = \"a\"\nsha256 = \"XYZ\"\n",
        );
        let e = Recipe::load(&p).unwrap_err().to_string();
        assert!(e.contains("f.toml:3:"), "{e}");
    }
}
