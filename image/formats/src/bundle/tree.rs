//! Recomputes a dm-verity hash tree (format 1, as `veritysetup format` lays it out: data,
//! then one superblock block, then the tree's levels, top level first) over a root image as it
//! streams past, in bounded memory: one hash block per level, plus a SHA-256 of each level of
//! the tree found in the stream to compare with the recomputed one.

use blake2::Blake2b512;
use sha2::{Digest, Sha256};

use super::BundleError;

pub const BLOCK: u64 = 4096;
const SUPERBLOCK_SIGNATURE: &[u8; 8] = b"verity\0\0";

/// A hash the verity tree can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeHash {
    Blake2b512,
    Sha256,
}

impl TreeHash {
    pub fn parse(name: &str) -> Option<TreeHash> {
        match name {
            "blake2b-512" => Some(TreeHash::Blake2b512),
            "sha256" => Some(TreeHash::Sha256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TreeHash::Blake2b512 => "blake2b-512",
            TreeHash::Sha256 => "sha256",
        }
    }

    pub fn digest_size(self) -> usize {
        match self {
            TreeHash::Blake2b512 => 64,
            TreeHash::Sha256 => 32,
        }
    }

    /// Format 1: the salt goes first.
    fn salted(self, salt: &[u8], block: &[u8]) -> Vec<u8> {
        match self {
            TreeHash::Blake2b512 => {
                let mut h = Blake2b512::new();
                h.update(salt);
                h.update(block);
                h.finalize().to_vec()
            }
            TreeHash::Sha256 => {
                let mut h = Sha256::new();
                h.update(salt);
                h.update(block);
                h.finalize().to_vec()
            }
        }
    }
}

/// The tree's shape: how many blocks each level has, leaves (level 0) first.
pub fn level_sizes(data_blocks: u64, hash: TreeHash) -> Vec<u64> {
    let per_bits = (BLOCK as usize / hash.digest_size()).trailing_zeros();
    let mut levels = 0u32;
    while per_bits * levels < 64 && (data_blocks.saturating_sub(1) >> (per_bits * levels)) != 0 {
        levels += 1;
    }
    (0..levels)
        .map(|i| {
            let shift = (i + 1) * per_bits;
            if shift >= 64 {
                1
            } else {
                data_blocks.div_ceil(1u64 << shift)
            }
        })
        .collect()
}

/// The verity parameters a root image is checked against.
#[derive(Debug, Clone)]
pub struct TreeParams {
    pub hash: TreeHash,
    pub data_blocks: u64,
    pub hash_offset_blocks: u64,
    pub root_hash: Vec<u8>,
    pub salt: Vec<u8>,
}

impl TreeParams {
    /// Size of the whole image: data (and any gap), superblock, tree.
    pub fn image_size(&self) -> u64 {
        let tree: u64 = level_sizes(self.data_blocks, self.hash).iter().sum();
        (self.hash_offset_blocks + 1 + tree) * BLOCK
    }
}

/// Feed the image in order with [`TreeCheck::update`], then [`TreeCheck::finish`].
pub struct TreeCheck {
    p: TreeParams,
    sizes: Vec<u64>,
    offset: u64,
    /// The data block being filled.
    block: Vec<u8>,
    /// Per level: the hash block being filled, blocks emitted so far, SHA-256 of the emitted.
    levels: Vec<(Vec<u8>, u64, Sha256)>,
    /// Digest of the top (root hash), once known.
    root: Option<Vec<u8>>,
    superblock: Vec<u8>,
    /// SHA-256 of each level as found in the image, leaves first.
    found: Vec<Sha256>,
}

impl TreeCheck {
    pub fn new(p: TreeParams) -> TreeCheck {
        let sizes = level_sizes(p.data_blocks, p.hash);
        let levels = sizes
            .iter()
            .map(|_| (Vec::with_capacity(BLOCK as usize), 0, Sha256::new()))
            .collect();
        let found = sizes.iter().map(|_| Sha256::new()).collect();
        TreeCheck {
            p,
            sizes,
            offset: 0,
            block: Vec::with_capacity(BLOCK as usize),
            levels,
            root: None,
            superblock: Vec::with_capacity(BLOCK as usize),
            found,
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        let data_end = self.p.data_blocks * BLOCK;
        let sb_start = self.p.hash_offset_blocks * BLOCK;
        let tree_start = sb_start + BLOCK;
        while !bytes.is_empty() {
            let at = self.offset;
            // How much of `bytes` belongs to the region `at` is in.
            let (region_end, take) = if at < data_end {
                let n = (BLOCK as usize - self.block.len()).min(bytes.len());
                (data_end, n)
            } else if at < sb_start {
                (sb_start, bytes.len())
            } else if at < tree_start {
                (tree_start, bytes.len())
            } else {
                (u64::MAX, bytes.len())
            };
            let take = take.min((region_end - at).min(usize::MAX as u64) as usize);
            let (chunk, rest) = bytes.split_at(take);
            if at < data_end {
                self.block.extend_from_slice(chunk);
                if self.block.len() == BLOCK as usize {
                    let digest = self.p.hash.salted(&self.p.salt, &self.block);
                    self.block.clear();
                    self.push(0, &digest);
                }
            } else if at >= sb_start && at < tree_start {
                self.superblock.extend_from_slice(chunk);
            } else if at >= tree_start {
                self.tree_bytes(at - tree_start, chunk);
            }
            self.offset += take as u64;
            bytes = rest;
        }
    }

    /// Bytes of the tree region, starting `rel` bytes into it, hashed per level.
    fn tree_bytes(&mut self, mut rel: u64, mut chunk: &[u8]) {
        // The region holds the levels top first.
        let mut starts = Vec::with_capacity(self.sizes.len());
        let mut pos = 0u64;
        for &s in self.sizes.iter().rev() {
            starts.push(pos);
            pos += s * BLOCK;
        }
        starts.reverse();
        while !chunk.is_empty() {
            let Some(level) = (0..self.sizes.len())
                .find(|&l| rel >= starts[l] && rel < starts[l] + self.sizes[l] * BLOCK)
            else {
                // Past the tree: the size check reports it.
                return;
            };
            let end = starts[level] + self.sizes[level] * BLOCK;
            let n = ((end - rel).min(chunk.len() as u64)) as usize;
            self.found[level].update(&chunk[..n]);
            rel += n as u64;
            chunk = &chunk[n..];
        }
    }

    /// Adds a digest to `level`'s current block; a full block goes up one level.
    fn push(&mut self, level: usize, digest: &[u8]) {
        if level == self.sizes.len() {
            self.root = Some(digest.to_vec());
            return;
        }
        self.levels[level].0.extend_from_slice(digest);
        if self.levels[level].0.len() == BLOCK as usize {
            self.emit(level);
        }
    }

    fn emit(&mut self, level: usize) {
        let mut block = std::mem::take(&mut self.levels[level].0);
        block.resize(BLOCK as usize, 0);
        self.levels[level].1 += 1;
        self.levels[level].2.update(&block);
        let digest = self.p.hash.salted(&self.p.salt, &block);
        self.push(level + 1, &digest);
    }

    /// Checks the root hash, the tree written after the data and its superblock.
    pub fn finish(mut self) -> Result<(), BundleError> {
        let bad = |what: String| Err(BundleError::Verity(what));
        if self.offset != self.p.image_size() || !self.block.is_empty() {
            return bad(format!(
                "root image is {} bytes, the verity layout needs {}",
                self.offset,
                self.p.image_size()
            ));
        }
        for level in 0..self.sizes.len() {
            if !self.levels[level].0.is_empty() {
                self.emit(level);
            }
        }
        // With a single data block there are no levels: its digest is the root.
        let Some(root) = self.root.take() else {
            return bad("empty root image".into());
        };
        if root != self.p.root_hash {
            return bad(format!(
                "root hash of the written root is {}, the manifest says {}",
                super::keys::hex(&root),
                super::keys::hex(&self.p.root_hash)
            ));
        }
        for (level, ((_, emitted, computed), found)) in
            self.levels.iter().zip(&self.found).enumerate()
        {
            if *emitted != self.sizes[level]
                || computed.clone().finalize() != found.clone().finalize()
            {
                return bad(format!(
                    "hash tree level {level} in the root image does not match its data"
                ));
            }
        }
        self.check_superblock()
    }

    fn check_superblock(&self) -> Result<(), BundleError> {
        let sb = &self.superblock;
        let bad = |what: &str| Err(BundleError::Verity(format!("verity superblock: {what}")));
        if sb.len() < 512 || &sb[..8] != SUPERBLOCK_SIGNATURE {
            return bad("no verity signature");
        }
        let u32_at = |i: usize| u32::from_le_bytes([sb[i], sb[i + 1], sb[i + 2], sb[i + 3]]);
        let mut blocks = [0u8; 8];
        blocks.copy_from_slice(&sb[72..80]);
        let salt_size = u16::from_le_bytes([sb[80], sb[81]]) as usize;
        let algorithm = sb[32..64].split(|&b| b == 0).next().unwrap_or(&[]);
        if u32_at(12) != 1 {
            return bad("hash format is not 1");
        }
        if algorithm != self.p.hash.name().as_bytes() {
            return bad("hash algorithm differs from the manifest");
        }
        if u32_at(64) as u64 != BLOCK || u32_at(68) as u64 != BLOCK {
            return bad("block sizes are not 4096");
        }
        if u64::from_le_bytes(blocks) != self.p.data_blocks {
            return bad("data block count differs from the manifest");
        }
        if salt_size > 256 || sb[88..88 + salt_size] != self.p.salt[..] {
            return bad("salt differs from the manifest");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_matches_the_kernel() {
        // 64 blake2b digests per block.
        assert_eq!(level_sizes(1, TreeHash::Blake2b512), Vec::<u64>::new());
        assert_eq!(level_sizes(2, TreeHash::Blake2b512), vec![1]);
        assert_eq!(level_sizes(64, TreeHash::Blake2b512), vec![1]);
        assert_eq!(level_sizes(65, TreeHash::Blake2b512), vec![2, 1]);
        assert_eq!(level_sizes(3956, TreeHash::Blake2b512), vec![62, 1]);
        assert_eq!(level_sizes(4097, TreeHash::Sha256), vec![33, 1]);
    }

    /// The recomputed tree is veritysetup's, byte for byte (when veritysetup is installed).
    #[test]
    fn matches_veritysetup() {
        if std::process::Command::new("veritysetup")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("veritysetup not installed; skipping");
            return;
        }
        let dir = std::env::temp_dir().join(format!("berth-tree-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (blocks, hash) in [
            (1u64, TreeHash::Blake2b512),
            (5, TreeHash::Blake2b512),
            (130, TreeHash::Blake2b512),
            (4200, TreeHash::Blake2b512),
            (70, TreeHash::Sha256),
        ] {
            let img = dir.join(format!("img-{blocks}"));
            let data: Vec<u8> = (0..blocks * BLOCK)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect();
            std::fs::write(&img, &data).unwrap();
            let out = std::process::Command::new("veritysetup")
                .arg("format")
                .arg(format!("--hash={}", hash.name()))
                .arg(format!("--data-blocks={blocks}"))
                .arg(format!("--hash-offset={}", blocks * BLOCK))
                .arg(&img)
                .arg(&img)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                    .unwrap()
            };
            let params = TreeParams {
                hash,
                data_blocks: blocks,
                hash_offset_blocks: blocks,
                root_hash: super::super::keys::unhex(&field("Root hash:")).unwrap(),
                salt: super::super::keys::unhex(&field("Salt:")).unwrap(),
            };
            let image = std::fs::read(&img).unwrap();
            assert_eq!(image.len() as u64, params.image_size(), "{blocks}");
            // Odd chunk sizes cross every region boundary.
            let mut check = TreeCheck::new(params.clone());
            for chunk in image.chunks(1000) {
                check.update(chunk);
            }
            check.finish().unwrap();
            if blocks > 1000 {
                continue;
            }
            // One flipped bit in the data, the tree or the superblock's salt is found.
            for at in [
                7,
                (blocks * BLOCK) as usize + 88,
                (blocks * BLOCK + BLOCK) as usize + 3,
            ] {
                if at >= image.len() {
                    continue;
                }
                let mut bad = image.clone();
                bad[at] ^= 1;
                let mut check = TreeCheck::new(params.clone());
                check.update(&bad);
                assert!(check.finish().is_err(), "flip at {at} of {blocks} blocks");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
