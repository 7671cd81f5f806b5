//! File names that come from files (a store's shard list, a checkpoint's
//! state): they must be plain names inside their folder, so that a crafted
//! `../x` or `/dev/zero` never makes a reader leave it.

/// Whether `name` is a plain file name: not empty, no separators, not
/// hidden, `.` or `..`.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
}

#[cfg(test)]
mod tests {
    use super::is_plain_file_name;

    #[test]
    fn only_names_inside_the_folder_are_plain() {
        for good in ["shard-00000.safetensors", "sae_0.safetensors", "a"] {
            assert!(is_plain_file_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/dev/zero",
            "a/b",
            "a\\b",
            ".hidden",
            "a\0b",
        ] {
            assert!(!is_plain_file_name(bad), "{bad:?}");
        }
    }
}
