//! `nutshell image import|ls`.

use anyhow::{Context, Result};
use clap::Subcommand;
use nutshell_image::{human_size, ImageStore, ImportOptions};

use crate::Cli;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Imports an OCI image layout (directory or tar) or a docker-archive tar.
    Import {
        path: std::path::PathBuf,
        /// Which image of a multi-image input, or a name to give it.
        #[arg(long)]
        name: Option<String>,
    },
    /// Lists the imported images.
    Ls,
}

/// The reference an explicit `image import` holds, so that the gc after a pod's `rm` keeps
/// the image (images a pod imported itself go with the pod).
pub const IMPORTED_HOLDER: &str = "nutshell:imported";

pub fn open_store(cli: &Cli) -> Result<ImageStore> {
    ImageStore::open(&cli.image_store)
        .with_context(|| format!("image store {}", cli.image_store.display()))
}

pub fn run(cli: &Cli, command: &ImageCommand) -> Result<()> {
    let store = open_store(cli)?;
    match command {
        ImageCommand::Import { path, name } => {
            let progress = |p: &nutshell_image::Progress| eprintln!("  {p}");
            let image = store
                .import_with(
                    path,
                    &ImportOptions {
                        name: name.as_deref(),
                        holder: Some(IMPORTED_HOLDER),
                        progress: Some(&progress),
                    },
                )
                .with_context(|| format!("importing {}", path.display()))?;
            println!("{} {}", image.id, image.names.join(","));
        }
        ImageCommand::Ls => {
            println!("{:<40} {:<12} {:>10}", "NAME", "ID", "SIZE");
            for image in store.images()? {
                let size: u64 = image.layers.iter().map(|l| l.size).sum();
                let id = image.id.to_string();
                let short = id
                    .trim_start_matches("sha256:")
                    .get(..12)
                    .unwrap_or(&id)
                    .to_string();
                println!(
                    "{:<40} {:<12} {:>10}",
                    image.names.join(","),
                    short,
                    human_size(size)
                );
            }
        }
    }
    Ok(())
}
