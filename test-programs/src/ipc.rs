//! SysV shm, semaphores and message queues, and POSIX message queues: the
//! IPC namespace checks.

use std::ffi::CString;
use std::io::Error;

const MODE: libc::c_int = 0o666;
/// Size of shm segments and message buffers.
const SIZE: usize = 4096;

fn os_err(what: &str) -> String {
    format!("{what}: {}", Error::last_os_error())
}

fn checked_text(text: &str) -> Result<&[u8], String> {
    if text.len() >= SIZE {
        return Err(format!("text longer than {} bytes", SIZE - 1));
    }
    Ok(text.as_bytes())
}

pub fn shm_create(key: i32, text: &str) -> Result<(), String> {
    let text = checked_text(text)?;
    // SAFETY: plain syscall; the result is checked.
    let id = unsafe { libc::shmget(key, SIZE, libc::IPC_CREAT | MODE) };
    if id < 0 {
        return Err(os_err("shmget"));
    }
    // SAFETY: attaches the segment just obtained at an address the kernel picks.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
    if addr as isize == -1 {
        return Err(os_err("shmat"));
    }
    // SAFETY: the segment is SIZE bytes and text is shorter (checked), so the
    // copy and the NUL after it stay inside; it is detached right after.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), addr.cast::<u8>(), text.len());
        *addr.cast::<u8>().add(text.len()) = 0;
        libc::shmdt(addr);
    }
    println!("shm {key} id {id}");
    Ok(())
}

pub fn shm_read(key: i32) -> Result<(), String> {
    // SAFETY: plain syscall; size 0 looks up an existing segment.
    let id = unsafe { libc::shmget(key, 0, 0) };
    if id < 0 {
        return Err(os_err("shmget"));
    }
    // SAFETY: read-only attach of an existing segment.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), libc::SHM_RDONLY) };
    if addr as isize == -1 {
        return Err(os_err("shmat"));
    }
    // SAFETY: the segment is at least SIZE bytes (it was created with SIZE);
    // the slice is copied out before the detach.
    let bytes = unsafe { std::slice::from_raw_parts(addr.cast::<u8>(), SIZE) }.to_vec();
    // SAFETY: addr came from shmat above and is not used afterwards.
    unsafe { libc::shmdt(addr) };
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(SIZE);
    println!("{}", String::from_utf8_lossy(&bytes[..end]));
    Ok(())
}

pub fn sem_create(key: i32, value: i32) -> Result<(), String> {
    // SAFETY: plain syscall; the result is checked.
    let id = unsafe { libc::semget(key, 1, libc::IPC_CREAT | MODE) };
    if id < 0 {
        return Err(os_err("semget"));
    }
    // SAFETY: SETVAL takes an int as its fourth (union semun) argument.
    if unsafe { libc::semctl(id, 0, libc::SETVAL, value) } < 0 {
        return Err(os_err("semctl SETVAL"));
    }
    println!("sem {key} id {id}");
    Ok(())
}

pub fn sem_read(key: i32) -> Result<(), String> {
    // SAFETY: plain syscall; nsems 0 looks up an existing set.
    let id = unsafe { libc::semget(key, 0, 0) };
    if id < 0 {
        return Err(os_err("semget"));
    }
    // SAFETY: GETVAL takes no fourth argument.
    let value = unsafe { libc::semctl(id, 0, libc::GETVAL) };
    if value < 0 {
        return Err(os_err("semctl GETVAL"));
    }
    println!("{value}");
    Ok(())
}

/// `struct msgbuf` with room for SIZE bytes of text.
#[repr(C)]
struct MsgBuf {
    mtype: libc::c_long,
    mtext: [u8; SIZE],
}

pub fn msg_send(key: i32, text: &str) -> Result<(), String> {
    let text = checked_text(text)?;
    // SAFETY: plain syscall; the result is checked.
    let id = unsafe { libc::msgget(key, libc::IPC_CREAT | MODE) };
    if id < 0 {
        return Err(os_err("msgget"));
    }
    let mut buf = MsgBuf {
        mtype: 1,
        mtext: [0; SIZE],
    };
    buf.mtext[..text.len()].copy_from_slice(text);
    // SAFETY: buf is a valid msgbuf with text.len() <= SIZE bytes of text.
    let rc = unsafe {
        libc::msgsnd(
            id,
            (&buf as *const MsgBuf).cast(),
            text.len(),
            libc::IPC_NOWAIT,
        )
    };
    if rc < 0 {
        return Err(os_err("msgsnd"));
    }
    println!("msg {key} id {id}");
    Ok(())
}

pub fn msg_recv(key: i32) -> Result<(), String> {
    // SAFETY: plain syscall; looks up an existing queue.
    let id = unsafe { libc::msgget(key, 0) };
    if id < 0 {
        return Err(os_err("msgget"));
    }
    let mut buf = MsgBuf {
        mtype: 0,
        mtext: [0; SIZE],
    };
    // SAFETY: buf has room for SIZE bytes of text, the size passed.
    let n = unsafe {
        libc::msgrcv(
            id,
            (&mut buf as *mut MsgBuf).cast(),
            SIZE,
            0,
            libc::IPC_NOWAIT,
        )
    };
    if n < 0 {
        return Err(os_err("msgrcv"));
    }
    println!("{}", String::from_utf8_lossy(&buf.mtext[..n as usize]));
    Ok(())
}

fn mq_name(name: &str) -> Result<CString, String> {
    let name = format!("/{}", name.trim_start_matches('/'));
    CString::new(name).map_err(|_| "queue name contains NUL".to_owned())
}

pub fn mq_send(name: &str, text: &str) -> Result<(), String> {
    let text = checked_text(text)?;
    let cname = mq_name(name)?;
    // SAFETY: mq_attr is plain data; zeroed is a valid value to fill in.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    attr.mq_maxmsg = 4;
    attr.mq_msgsize = SIZE as libc::c_long;
    // SAFETY: cname is NUL-terminated; O_CREAT takes mode and attr pointer.
    let mqd = unsafe {
        libc::mq_open(
            cname.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK,
            MODE as libc::mode_t,
            &attr as *const libc::mq_attr,
        )
    };
    if mqd < 0 {
        return Err(os_err("mq_open"));
    }
    // SAFETY: text is valid for text.len() bytes; mqd is open.
    let rc = unsafe { libc::mq_send(mqd, text.as_ptr().cast(), text.len(), 0) };
    let err = os_err("mq_send");
    // SAFETY: mqd is open and not used afterwards.
    unsafe { libc::mq_close(mqd) };
    if rc < 0 {
        return Err(err);
    }
    println!("mq {}", cname.to_string_lossy());
    Ok(())
}

pub fn mq_recv(name: &str) -> Result<(), String> {
    let cname = mq_name(name)?;
    // SAFETY: cname is NUL-terminated; no O_CREAT, so no further arguments.
    let mqd = unsafe { libc::mq_open(cname.as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    if mqd < 0 {
        return Err(os_err("mq_open"));
    }
    // SAFETY: mq_attr is plain data, filled by mq_getattr.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: mqd is open; attr is a valid out pointer.
    if unsafe { libc::mq_getattr(mqd, &mut attr) } < 0 {
        return Err(os_err("mq_getattr"));
    }
    let mut buf = vec![0u8; attr.mq_msgsize.max(1) as usize];
    // SAFETY: buf has buf.len() bytes, at least mq_msgsize as mq_receive needs.
    let n = unsafe {
        libc::mq_receive(
            mqd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            std::ptr::null_mut(),
        )
    };
    let err = os_err("mq_receive");
    // SAFETY: mqd is open and not used afterwards.
    unsafe { libc::mq_close(mqd) };
    if n < 0 {
        return Err(err);
    }
    println!("{}", String::from_utf8_lossy(&buf[..n as usize]));
    Ok(())
}
