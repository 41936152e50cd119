/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * mm_template: copy-on-write memory templates (/dev/mm_template), user API.
 *
 * A template is an immutable copy of user memory held by the module. Processes map it with
 * mmap(MAP_PRIVATE) on the device after selecting it: reads share the template's pages, writes get
 * private copies. The ABI is versioned: MMT_IOC_VERSION returns MMT_ABI_VERSION; a caller built for
 * another version must refuse to run (fields are never reinterpreted within a version).
 */
#ifndef _UAPI_MM_TEMPLATE_H
#define _UAPI_MM_TEMPLATE_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define MMT_ABI_VERSION 2
#define MMT_DEVICE "/dev/mm_template"
/*
 * Since ABI 2: filesystem type "mm_template" (mount it, e.g. at MMT_FS_DIR): <dir>/<id> is template
 * <id> as a read-only regular file (owner: the creator, mode 0400). mmap(MAP_PRIVATE) of it maps the
 * template (prefaulted unless the module parameter file_prefault is 0); MMT_IOC_VERSION and
 * MMT_IOC_MAP_PID (id = the file's template) work on it, so the mapped region names the file, which
 * CRIU can checkpoint and restore like any private file mapping without copying its pages.
 */
#define MMT_FS_TYPE "mm_template"
#define MMT_FS_DIR "/run/mm_template"
#define MMT_IOC_MAGIC 0xB7

/* Largest template: 4 GiB (a bound on what one ioctl may pin). */
#define MMT_MAX_BYTES (4ULL << 30)

/* MMT_IOC_CREATE: copy [addr, addr+len) of the caller's memory into a new template. */
struct mmt_create {
	__u64 addr;	/* in: page aligned user address */
	__u64 len;	/* in: page aligned, 0 < len <= MMT_MAX_BYTES */
	__u32 flags;	/* in: must be 0 */
	__u32 id;	/* out: template id (> 0) */
};

/* Map flags (MMT_IOC_SELECT / MMT_IOC_MAP_PID). */
#define MMT_MAP_PREFAULT 0x1	/* insert every page table entry at mmap (VM_MIXEDMAP) */
#define MMT_MAP_FLAGS_ALL MMT_MAP_PREFAULT

/* MMT_IOC_SELECT: the next mmap() of this fd maps template `id` (file offset = template offset). */
struct mmt_select {
	__u32 id;
	__u32 flags;	/* MMT_MAP_* */
};

/* MMT_IOC_QUERY */
struct mmt_query {
	__u32 id;		/* in */
	__u32 owner_uid;	/* out */
	__u64 pages;		/* out: pages held by the template */
	__u64 mappers;		/* out: VMAs mapping it now */
	__u64 bytes_charged;	/* out: bytes charged to the creator's memcg */
	__u32 deleted;		/* out: 1 when deleted but still mapped */
	__u32 pad;
};

/*
 * MMT_IOC_MAP_PID: map template `id` into another, STOPPED process (SIGSTOP or ptrace-stopped)
 * at a fixed address, replacing what was there (MAP_PRIVATE|MAP_FIXED). Needs CAP_SYS_PTRACE.
 */
struct mmt_map_pid {
	__u32 id;
	__u32 flags;	/* MMT_MAP_* */
	__s32 pid;	/* in the caller's pid namespace */
	__u32 prot;	/* PROT_READ|PROT_WRITE|PROT_EXEC subset */
	__u64 addr;	/* page aligned target address */
	__u64 len;	/* page aligned */
	__u64 offset;	/* page aligned offset into the template */
};

#define MMT_IOC_VERSION _IOR(MMT_IOC_MAGIC, 0, __u32)
#define MMT_IOC_CREATE  _IOWR(MMT_IOC_MAGIC, 1, struct mmt_create)
#define MMT_IOC_SELECT  _IOW(MMT_IOC_MAGIC, 2, struct mmt_select)
#define MMT_IOC_QUERY   _IOWR(MMT_IOC_MAGIC, 3, struct mmt_query)
#define MMT_IOC_DELETE  _IOW(MMT_IOC_MAGIC, 4, __u32)
#define MMT_IOC_MAP_PID _IOW(MMT_IOC_MAGIC, 5, struct mmt_map_pid)

#endif
