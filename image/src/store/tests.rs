use std::cell::RefCell;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::testutil::{
    self, is_root, two_layers, write_docker_archive, write_docker_archive_for, write_oci_layout,
    write_oci_layout_with, LayerTar,
};
use crate::whiteout::is_whiteout;

struct Fixture {
    _dir: tempfile::TempDir,
    inputs: PathBuf,
    store: ImageStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs");
    fs::create_dir(&inputs).unwrap();
    let mut store = ImageStore::open(dir.path().join("cache")).unwrap();
    store.set_durable(false);
    Fixture {
        _dir: dir,
        inputs,
        store,
    }
}

/// Imports, collecting the progress events.
fn import(store: &ImageStore, path: &Path) -> (Result<Image>, Vec<Progress>) {
    let events = RefCell::new(Vec::new());
    let record = |p: &Progress| events.borrow_mut().push(p.clone());
    let options = ImportOptions {
        progress: Some(&record),
        ..Default::default()
    };
    let result = store.import_with(path, &options);
    (result, events.into_inner())
}

fn unpacked_count(events: &[Progress]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Progress::Unpacked { .. }))
        .count()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names = read_dir_names(dir).unwrap();
    names.sort();
    names
}

/// The cache holds nothing but complete layers: no temp dirs, no image record.
fn assert_clean_failure(store: &ImageStore, complete_layers: &[&Digest]) {
    assert!(
        names(&store.tmp_dir()).is_empty(),
        "tmp: {:?}",
        names(&store.tmp_dir())
    );
    assert!(names(&store.images_dir()).is_empty());
    let mut expected: Vec<String> = complete_layers
        .iter()
        .map(|d| d.hex().to_string())
        .collect();
    expected.sort();
    assert_eq!(names(&store.layers_dir()), expected);
}

fn check_two_layer_image(store: &ImageStore, image: &Image, diff_ids: &[Digest]) {
    assert_eq!(image.layers.len(), 2);
    let dirs = store.lower_dirs(image).unwrap();
    // Top layer first.
    assert_eq!(
        dirs,
        [store.layer_dir(&diff_ids[1]), store.layer_dir(&diff_ids[0])]
    );
    assert!(dirs.iter().all(|d| d.is_absolute()));
    assert_eq!(fs::read(dirs[0].join("etc/os-release")).unwrap(), b"top\n");
    assert_eq!(fs::read(dirs[1].join("etc/os-release")).unwrap(), b"base\n");
    assert_eq!(fs::read(dirs[1].join("bin/sh")).unwrap(), b"#!sh\n");
    if is_root() {
        assert!(is_whiteout(
            &fs::symlink_metadata(dirs[0].join("data/old")).unwrap()
        ));
    }
    let process = image.process().unwrap();
    assert_eq!(image.default_command(), ["/bin/sh", "-c", "true"]);
    assert_eq!(process.working_dir().as_deref(), Some("/data"));
    assert_eq!(process.user().as_deref(), Some("1000:1000"));
    assert_eq!(
        process.env().as_deref(),
        Some(&["PATH=/bin".to_string()][..])
    );
    assert_eq!(
        process.exposed_ports().as_deref(),
        Some(&["8080/tcp".to_string()][..])
    );
}

#[test]
fn imports_a_docker_archive() {
    let mut f = fixture();
    // The default: layers are flushed (syncfs) before they are published.
    f.store.set_durable(true);
    let archive = f.inputs.join("image.tar");
    let written = write_docker_archive(&archive, &two_layers(), "example/app:1.0");
    let (image, events) = import(&f.store, &archive);
    let image = image.unwrap();
    assert_eq!(image.id, written.config);
    assert_eq!(image.names, ["example/app:1.0"]);
    assert_eq!(image.manifest_digest, None);
    check_two_layer_image(&f.store, &image, &written.diff_ids);
    assert_eq!(unpacked_count(&events), 2);
    assert!(matches!(
        &events[0],
        Progress::Unpacking {
            index: 1,
            count: 2,
            ..
        }
    ));
    assert_eq!(f.store.image(&image.id).unwrap(), image);
    assert_eq!(f.store.find("example/app:1.0").unwrap().id, image.id);
    assert_eq!(f.store.find(&image.id.to_string()).unwrap().id, image.id);
    assert!(names(&f.store.tmp_dir()).is_empty());
}

#[test]
fn imports_oci_layouts_as_dir_tar_and_gzipped_tar() {
    let f = fixture();
    let layout = f.inputs.join("layout");
    let written = write_oci_layout(&layout, &two_layers(), true, "example/app:oci");
    let (image, events) = import(&f.store, &layout);
    let image = image.unwrap();
    assert_eq!(image.id, written.config);
    assert_eq!(image.names, ["example/app:oci"]);
    assert!(image.manifest_digest.is_some());
    assert_eq!(
        image.layers[0].blob_digest.as_ref(),
        Some(&written.blobs[0])
    );
    check_two_layer_image(&f.store, &image, &written.diff_ids);
    assert_eq!(unpacked_count(&events), 2);

    // The same image, uncompressed layers, as a tar: same diff_ids, so nothing is unpacked.
    let plain_layout = f.inputs.join("plain");
    let plain = write_oci_layout(&plain_layout, &two_layers(), false, "example/app:plain");
    let tar = f.inputs.join("layout.tar");
    testutil::tar_dir(&plain_layout, &tar);
    let (again, events) = import(&f.store, &tar);
    let again = again.unwrap();
    assert_eq!(again.id, image.id);
    assert_eq!(again.names, ["example/app:oci", "example/app:plain"]);
    assert_eq!(again.layers[0].blob_digest.as_ref(), Some(&plain.blobs[0]));
    assert_eq!(unpacked_count(&events), 0);

    // A gzipped tar of the layout, into a fresh store so that it really unpacks.
    let gz = f.inputs.join("layout.tar.gz");
    fs::write(&gz, testutil::gzip(&fs::read(&tar).unwrap())).unwrap();
    let mut other = ImageStore::open(f.inputs.join("other-cache")).unwrap();
    other.set_durable(false);
    let (from_gz, events) = import(&other, &gz);
    check_two_layer_image(&other, &from_gz.unwrap(), &written.diff_ids);
    assert!(matches!(events[0], Progress::Decompressing { .. }));
    assert!(
        names(&other.tmp_dir()).is_empty(),
        "the decompressed copy is removed"
    );
}

#[test]
fn unpacks_each_layer_once() {
    let f = fixture();
    let layout = f.inputs.join("layout");
    write_oci_layout(&layout, &two_layers(), true, "x");
    let (image, _) = import(&f.store, &layout);
    let image = image.unwrap();
    let dirs = f.store.lower_dirs(&image).unwrap();
    let before: Vec<(u64, i64)> = dirs
        .iter()
        .map(|d| fs::metadata(d.join("etc/os-release")).unwrap())
        .map(|m| (m.ino(), m.ctime_nsec()))
        .collect();
    let (again, events) = import(&f.store, &layout);
    assert_eq!(again.unwrap(), image);
    assert_eq!(unpacked_count(&events), 0);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Progress::Cached { .. }))
            .count(),
        2
    );
    let after: Vec<(u64, i64)> = dirs
        .iter()
        .map(|d| fs::metadata(d.join("etc/os-release")).unwrap())
        .map(|m| (m.ino(), m.ctime_nsec()))
        .collect();
    assert_eq!(before, after);
}

#[test]
fn concurrent_imports_of_the_same_layers_are_safe() {
    let f = fixture();
    let layout = f.inputs.join("layout");
    write_oci_layout(&layout, &two_layers(), true, "x");
    let store = Arc::new(f.store);
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            let layout = layout.clone();
            std::thread::spawn(move || store.import(&layout).unwrap())
        })
        .collect();
    let images: Vec<Image> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(images.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(names(&store.layers_dir()).len(), 2);
    assert!(names(&store.tmp_dir()).is_empty());
    check_two_layer_image(
        &store,
        &images[0],
        &images[0]
            .layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>(),
    );
}

#[test]
fn layer_digest_mismatch_names_the_blob_and_leaves_nothing() {
    let f = fixture();
    let layout = f.inputs.join("layout");
    let written = write_oci_layout(&layout, &two_layers(), false, "x");
    // Change one byte of the top layer's file data, keeping its size.
    let blob = layout.join("blobs/sha256").join(written.blobs[1].hex());
    let mut bytes = fs::read(&blob).unwrap();
    let at = bytes.windows(4).position(|w| w == b"top\n").unwrap();
    bytes[at] = b'T';
    fs::write(&blob, bytes).unwrap();

    let err = f.store.import(&layout).unwrap_err();
    match &err {
        ImageError::DigestMismatch { blob, expected, .. } => {
            assert_eq!(*expected, written.blobs[1]);
            assert!(blob.contains(&written.blobs[1].to_string()), "{blob}");
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(err.to_string().contains(&written.blobs[1].to_string()));
    assert_clean_failure(&f.store, &[&written.diff_ids[0]]);
}

#[test]
fn corrupt_gzip_layer_is_reported_as_a_digest_mismatch() {
    let f = fixture();
    let layout = f.inputs.join("layout");
    let written = write_oci_layout(&layout, &two_layers(), true, "x");
    let blob = layout.join("blobs/sha256").join(written.blobs[0].hex());
    let mut bytes = fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&blob, bytes).unwrap();
    match f.store.import(&layout) {
        Err(ImageError::DigestMismatch { expected, .. }) => assert_eq!(expected, written.blobs[0]),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert_clean_failure(&f.store, &[]);
}

#[test]
fn config_and_manifest_digests_are_checked() {
    let f = fixture();
    let layout = f.inputs.join("layout");
    let written = write_oci_layout(&layout, &two_layers(), true, "x");
    let config = layout.join("blobs/sha256").join(written.config.hex());
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("/data", "/tada");
    fs::write(&config, text).unwrap();
    let err = f.store.import(&layout).unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { blob, .. } if blob.contains("config")),
        "{err}"
    );
    assert_clean_failure(&f.store, &[]);

    // A docker archive whose config is not what its <hex>.json name says.
    let archive = f.inputs.join("docker.tar");
    let written = write_docker_archive(&archive, &two_layers(), "x:1");
    let name = format!("{}.json", written.config.hex());
    let mut bytes = fs::read(&archive).unwrap();
    let at = bytes.windows(5).position(|w| w == b"/data").unwrap();
    bytes[at + 1] = b't';
    // The tar header checksum does not cover data, so the archive stays readable.
    fs::write(&archive, bytes).unwrap();
    let err = f.store.import(&archive).unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { blob, expected, .. } if blob.contains(&name) && *expected == written.config),
        "{err}"
    );
}

#[test]
fn diff_id_mismatch_is_detected() {
    let f = fixture();
    let archive = f.inputs.join("docker.tar");
    let mut layers = two_layers();
    let written = write_docker_archive(&archive, &layers, "x:1");
    // Rewrite the archive with a different top layer of the same size under the old config.
    let top = layers[1].clone();
    let at = top.windows(4).position(|w| w == b"top\n").unwrap();
    layers[1][at] = b'T';
    let bytes = fs::read(&archive).unwrap();
    let start = bytes
        .windows(top.len())
        .position(|w| w == &top[..])
        .unwrap();
    let mut patched = bytes.clone();
    patched[start..start + top.len()].copy_from_slice(&layers[1]);
    fs::write(&archive, patched).unwrap();
    match f.store.import(&archive) {
        Err(ImageError::DigestMismatch { expected, blob, .. }) => {
            assert_eq!(expected, written.diff_ids[1]);
            assert!(blob.contains("diff_id"), "{blob}");
        }
        other => panic!("expected a diff_id mismatch, got {other:?}"),
    }
    assert_clean_failure(&f.store, &[&written.diff_ids[0]]);
}

#[test]
fn failure_midway_through_a_layer_leaves_nothing_partial() {
    let f = fixture();
    let layout = f.inputs.join("layout");
    let bad = LayerTar::new()
        .dir("etc", 0o755)
        .file("etc/fine", b"fine", 0o644)
        .symlink("escape", "/")
        .file("escape/etc/passwd", b"pwned", 0o644)
        .file("etc/never", b"never", 0o644)
        .finish();
    let layers = vec![two_layers().remove(0), bad];
    let written = write_oci_layout(&layout, &layers, true, "x");
    let err = f.store.import(&layout).unwrap_err();
    assert!(
        matches!(&err, ImageError::UnsafeEntry { entry, layer, .. } if entry == "escape/etc/passwd" && *layer == written.diff_ids[1]),
        "{err}"
    );
    assert_clean_failure(&f.store, &[&written.diff_ids[0]]);
}

#[test]
fn zstd_layers_are_unsupported_by_name() {
    let f = fixture();
    let layout = f.inputs.join("layout");
    // zstd's magic, whatever the media type says.
    let fake_zstd = |_: &[u8]| [&[0x28, 0xb5, 0x2f, 0xfd][..], b"not really zstd"].concat();
    let written = write_oci_layout_with(
        &layout,
        &two_layers(),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &fake_zstd,
        "x",
    );
    let err = f.store.import(&layout).unwrap_err();
    assert!(matches!(&err, ImageError::Unsupported { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(&written.blobs[0].to_string()) && message.contains("zstd"),
        "{message}"
    );
    assert_clean_failure(&f.store, &[]);
}

#[test]
fn gc_removes_unreferenced_layers_and_keeps_referenced_ones() {
    let f = fixture();
    let base = two_layers().remove(0);
    let only_a = LayerTar::new().file("a", b"a", 0o644).finish();
    let only_b = LayerTar::new().file("b", b"b", 0o644).finish();
    let a = write_docker_archive(&f.inputs.join("a.tar"), &[base.clone(), only_a], "a:1");
    let b = write_oci_layout(&f.inputs.join("b"), &[base, only_b], true, "b:1");
    f.store.import(f.inputs.join("a.tar")).unwrap();
    let options = ImportOptions {
        holder: Some("pod/b"),
        ..Default::default()
    };
    let image_b = f.store.import_with(f.inputs.join("b"), &options).unwrap();
    assert_eq!(f.store.references(&image_b.id).unwrap(), ["pod/b"]);
    assert_eq!(names(&f.store.layers_dir()).len(), 3);
    // Something an interrupted import left behind.
    fs::create_dir(f.store.tmp_dir().join("layer-stale")).unwrap();

    let report = f.store.gc().unwrap();
    assert_eq!(report.removed_images, std::slice::from_ref(&a.config));
    assert_eq!(report.removed_layers, [a.diff_ids[1].clone()]);
    assert!(!f.store.layer_dir(&a.diff_ids[1]).exists());
    assert!(
        f.store.layer_dir(&b.diff_ids[0]).is_dir(),
        "shared base layer is kept"
    );
    assert_eq!(f.store.lower_dirs(&image_b).unwrap().len(), 2);
    assert!(matches!(
        f.store.image(&a.config),
        Err(ImageError::ImageNotFound { .. })
    ));
    assert!(names(&f.store.tmp_dir()).is_empty());

    // A second holder; dropping one keeps the image.
    f.store.add_ref(&image_b.id, "cli").unwrap();
    assert!(f.store.remove_ref(&image_b.id, "pod/b").unwrap());
    assert!(!f.store.remove_ref(&image_b.id, "pod/b").unwrap());
    assert_eq!(f.store.gc().unwrap(), GcReport::default());
    assert!(f.store.remove_ref(&image_b.id, "cli").unwrap());
    let report = f.store.gc().unwrap();
    assert_eq!(report.removed_images, std::slice::from_ref(&image_b.id));
    assert_eq!(report.removed_layers.len(), 2);
    assert!(names(&f.store.layers_dir()).is_empty());
    assert!(names(&f.store.refs_dir()).is_empty());
    assert!(matches!(
        f.store.add_ref(&image_b.id, "late"),
        Err(ImageError::ImageNotFound { .. })
    ));
}

#[test]
fn picks_an_image_by_name_when_there_are_several() {
    let f = fixture();
    let layout = f.inputs.join("layout");
    let first = write_oci_layout(&layout, &two_layers(), true, "first");
    let first_index = fs::read_to_string(layout.join("index.json")).unwrap();
    let other_layers = vec![LayerTar::new().file("x", b"x", 0o644).finish()];
    let second = write_oci_layout(&layout, &other_layers, true, "second");
    let mut index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let first_index: serde_json::Value = serde_json::from_str(&first_index).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(first_index["manifests"][0].clone());
    fs::write(layout.join("index.json"), index.to_string()).unwrap();

    let err = f.store.import(&layout).unwrap_err();
    assert!(
        matches!(&err, ImageError::AmbiguousImage { names, .. } if names.len() == 2),
        "{err}"
    );
    let pick = |name| {
        f.store.import_with(
            &layout,
            &ImportOptions {
                name: Some(name),
                ..Default::default()
            },
        )
    };
    assert_eq!(pick("first").unwrap().id, first.config);
    assert_eq!(pick("second").unwrap().id, second.config);
    assert!(matches!(
        pick("third"),
        Err(ImageError::NoMatchingImage { .. })
    ));
}

#[test]
fn rejects_other_inputs_and_platforms() {
    let f = fixture();
    let empty = f.inputs.join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(matches!(
        f.store.import(&empty),
        Err(ImageError::UnknownFormat { .. })
    ));
    let junk = f.inputs.join("junk");
    fs::write(&junk, b"not an image").unwrap();
    assert!(matches!(
        f.store.import(&junk),
        Err(ImageError::UnknownFormat { .. })
    ));
    assert!(matches!(
        f.store.import(f.inputs.join("missing")),
        Err(ImageError::Io { .. })
    ));

    // A docker archive whose config is for arm64.
    let archive = f.inputs.join("arm.tar");
    write_docker_archive_for(&archive, &two_layers(), "arm:1", "arm64");
    let err = f.store.import(&archive).unwrap_err();
    assert!(err.to_string().contains("linux/arm64"), "{err}");
}
