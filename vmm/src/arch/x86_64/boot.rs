//! Loading the guest kernel, initrd and command line, and writing the boot information the
//! kernel reads first: the PVH start info (vmlinux) or the zero page with its e820 map (bzImage).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress};

use super::layout;
use super::regs::BootEntry;
use crate::vstate::memory::GuestMemoryMmap;

const E820_RAM: u32 = 1;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
/// The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}: cannot open: {source}")]
    KernelOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path}: not an ELF vmlinux nor a bzImage (bad magic)")]
    KernelFormat { path: PathBuf },
    #[error("kernel {path}: vmlinux has no PVH entry point (build it with CONFIG_PVH=y)")]
    NoPvhEntry { path: PathBuf },
    #[error("kernel {path}: cannot load: {reason}")]
    KernelLoad { path: PathBuf, reason: String },
    #[error("initrd {path}: cannot read: {source}")]
    InitrdRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd {path}: {size} bytes do not fit in guest memory above the kernel (which ends at {kernel_end:#x}); give the guest more memory")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
    },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("cannot write boot information into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// The kernel as loaded into guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    pub entry: BootEntry,
    /// First byte after the kernel image.
    pub end: u64,
    /// The bzImage setup header, which the zero page must carry.
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

/// Where the initrd landed.
#[derive(Clone, Copy, Debug)]
pub struct LoadedInitrd {
    pub addr: GuestAddress,
    pub size: u64,
}

enum KernelFormat {
    Elf,
    BzImage,
}

fn detect_format(file: &mut File, path: &Path) -> Result<KernelFormat, BootError> {
    let mut head = [0u8; 0x206];
    let read = read_up_to(file, &mut head).map_err(|source| BootError::KernelOpen {
        path: path.into(),
        source,
    })?;
    file.seek(SeekFrom::Start(0))
        .map_err(|source| BootError::KernelOpen {
            path: path.into(),
            source,
        })?;
    if read >= 4 && head[..4] == *b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if read >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(BootError::KernelFormat { path: path.into() })
    }
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Loads a vmlinux (entered through PVH) or a bzImage (entered in 64-bit mode).
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::KernelOpen {
        path: path.into(),
        source,
    })?;
    let load_error = |e: linux_loader::loader::Error| BootError::KernelLoad {
        path: path.into(),
        reason: e.to_string(),
    };
    let himem = Some(GuestAddress(layout::HIMEM_START));
    match detect_format(&mut file, path)? {
        KernelFormat::Elf => {
            let result = Elf::load(mem, None, &mut file, himem).map_err(load_error)?;
            match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => Ok(LoadedKernel {
                    entry: BootEntry::Pvh { entry },
                    end: result.kernel_end,
                    setup_header: None,
                }),
                _ => Err(BootError::NoPvhEntry { path: path.into() }),
            }
        }
        KernelFormat::BzImage => {
            let result = BzImage::load(mem, None, &mut file, himem).map_err(load_error)?;
            Ok(LoadedKernel {
                entry: BootEntry::Linux64 {
                    entry: result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
                },
                end: result.kernel_end,
                setup_header: result.setup_header,
            })
        }
    }
}

/// Loads the initrd at the top of RAM below the MMIO gap, page aligned.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    mem_size: u64,
) -> Result<LoadedInitrd, BootError> {
    let read_error = |source| BootError::InitrdRead {
        path: path.into(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let size = file.metadata().map_err(read_error)?.len();
    let mut top = layout::low_ram_end(mem_size);
    if let Some(hdr) = kernel.setup_header {
        if hdr.initrd_addr_max != 0 {
            top = top.min(u64::from(hdr.initrd_addr_max) + 1);
        }
    }
    let addr = top.checked_sub(size).map(|a| a & !(PAGE_SIZE - 1));
    let addr = match addr {
        Some(addr) if addr >= kernel.end && size > 0 => addr,
        _ => {
            return Err(BootError::InitrdTooLarge {
                path: path.into(),
                size,
                kernel_end: kernel.end,
            })
        }
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| read_error(std::io::Error::other(e.to_string())))?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

/// Builds the kernel command line; `extra` holds entries the VMM adds (virtio-mmio devices).
pub fn build_cmdline(base: &str, extra: &[String]) -> Result<Cmdline, BootError> {
    let err = |e: linux_loader::cmdline::Error| BootError::Cmdline(e.to_string());
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(err)?;
    if !base.trim().is_empty() {
        cmdline.insert_str(base.trim()).map_err(err)?;
    }
    for entry in extra {
        cmdline.insert_str(entry).map_err(err)?;
    }
    Ok(cmdline)
}

/// RAM ranges as the guest sees them (the first 640 KiB, then from 1 MiB).
fn ram_map(mem_size: u64) -> Vec<(u64, u64)> {
    let mut map = vec![(0, layout::EBDA_START)];
    for (start, size) in layout::ram_regions(mem_size) {
        let start = start.max(layout::HIMEM_START);
        let end = if start < layout::MMIO_GAP_START {
            layout::low_ram_end(mem_size)
        } else {
            start + size
        };
        if end > start {
            map.push((start, end - start));
        }
    }
    map
}

/// Writes the command line and the boot information for `kernel`.
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline: &Cmdline,
    mem_size: u64,
) -> Result<(), BootError> {
    let cmdline_cstr = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_bytes = cmdline_cstr.as_bytes_with_nul();
    mem.write_slice(cmdline_bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(BootError::Write)?;
    let map = ram_map(mem_size);
    match kernel.entry {
        BootEntry::Pvh { .. } => write_pvh_start_info(mem, &map, initrd),
        BootEntry::Linux64 { .. } => {
            write_zero_page(mem, kernel, &map, initrd, cmdline_bytes.len())
        }
    }
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    map: &[(u64, u64)],
    initrd: Option<LoadedInitrd>,
) -> Result<(), BootError> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr.raw_value(),
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(layout::PVH_MODLIST_START))
            .map_err(BootError::Write)?;
        info.nr_modules = 1;
        info.modlist_paddr = layout::PVH_MODLIST_START;
    }
    for (i, (addr, size)) in map.iter().enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: E820_RAM,
            reserved: 0,
        };
        let at =
            layout::PVH_MEMMAP_START + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))
            .map_err(BootError::Write)?;
    }
    mem.write_obj(info, GuestAddress(layout::PVH_INFO_START))
        .map_err(BootError::Write)
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    map: &[(u64, u64)],
    initrd: Option<LoadedInitrd>,
    cmdline_len: usize,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    for (i, (addr, size)) in map.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].type_ = E820_RAM;
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(layout::ZERO_PAGE_START))
        .map_err(BootError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn memory(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    #[test]
    fn ram_map_skips_bios_hole() {
        let map = ram_map(128 << 20);
        assert_eq!(
            map,
            vec![
                (0, layout::EBDA_START),
                (layout::HIMEM_START, (128 << 20) - layout::HIMEM_START)
            ]
        );
        let big = ram_map(4 << 30);
        assert_eq!(big.len(), 3);
        assert_eq!(big[2].0, 1 << 32);
    }

    #[test]
    fn garbage_kernel_is_rejected_by_name() {
        let dir = std::env::temp_dir().join(format!("nutshell-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("garbage");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"not a kernel")
            .unwrap();
        let err = load_kernel(&memory(64 << 20), &path).unwrap_err();
        assert!(matches!(err, BootError::KernelFormat { .. }), "{err}");
        assert!(err.to_string().contains("garbage"));
        let truncated = dir.join("truncated");
        std::fs::File::create(&truncated)
            .unwrap()
            .write_all(b"\x7fELF\x02\x01")
            .unwrap();
        let err = load_kernel(&memory(64 << 20), &truncated).unwrap_err();
        assert!(matches!(err, BootError::KernelLoad { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn cmdline_gets_device_entries() {
        let cmdline = build_cmdline(
            "console=ttyS0",
            &["virtio_mmio.device=4K@0xd0000000:5".into()],
        )
        .unwrap();
        let s = cmdline.as_cstring().unwrap().into_string().unwrap();
        assert_eq!(s, "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5");
    }
}
