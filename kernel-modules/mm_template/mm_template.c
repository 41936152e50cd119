// SPDX-License-Identifier: GPL-2.0
/*
 * mm_template: copy-on-write memory templates for any runtime.
 *
 * A template is a copy of user memory in pages owned by this module (charged to the creator's memcg).
 * mmap(MAP_PRIVATE) of /dev/mm_template after MMT_IOC_SELECT maps it: a read fault maps the
 * template page itself read-only, a write fault makes the core copy it into a private anonymous page
 * (COW). So N mappers share one copy of what they only read. Two ways to fill the page tables:
 * one fault per page (default) or every entry at mmap (MMT_MAP_PREFAULT: VM_MIXEDMAP +
 * vm_insert_pages), which avoids a fault per page for memory that will be read anyway.
 *
 * Lifetime: a template is referenced by the id table (until DELETE), by each fd that selected it
 * and by each VMA mapping it (vm_ops open/close keep that right across split, mremap and fork);
 * its pages go at the last reference. Each mapped page also holds its own page reference.
 * fops.owner pins the module while any fd or mapping exists, so rmmod is refused meanwhile.
 */
#include <linux/module.h>
#include <linux/miscdevice.h>
#include <linux/fs.h>
#include <linux/mm.h>
#include <linux/mman.h>
#include <linux/idr.h>
#include <linux/kref.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include <linux/cred.h>
#include <linux/capability.h>
#include <linux/kthread.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/pid.h>
#include <linux/completion.h>
#include <linux/fs_context.h>
#include <linux/moduleparam.h>
#include <linux/kstrtox.h>
#include <linux/namei.h>
#include "mm_template.h"

struct mmt_template {
	struct kref ref;
	u32 id;
	kuid_t owner;
	unsigned long npages;
	struct page **pages;
	atomic_long_t mappers;	/* VMAs mapping it */
	bool deleted;
	struct timespec64 created;	/* its file's mtime/ctime: with the id, who it is (ids are reused after a reload) */
};

/* per open fd */
struct mmt_fd {
	struct mutex lock;
	struct mmt_template *sel;	/* what the next mmap maps (holds a reference) */
	u32 flags;
};

static DEFINE_IDR(mmt_idr);
static DEFINE_MUTEX(mmt_lock);	/* the id table */
static atomic_long_t mmt_live_templates, mmt_live_pages, mmt_created, mmt_freed;
static atomic_long_t mmt_faults, mmt_prefaulted_pages, mmt_maps;
static struct dentry *mmt_debugfs;

static void mmt_release(struct kref *ref)
{
	struct mmt_template *t = container_of(ref, struct mmt_template, ref);
	unsigned long i;

	for (i = 0; i < t->npages; i++)
		if (t->pages[i])
			put_page(t->pages[i]);
	atomic_long_sub(t->npages, &mmt_live_pages);
	atomic_long_dec(&mmt_live_templates);
	atomic_long_inc(&mmt_freed);
	kvfree(t->pages);
	kfree(t);
}

static void mmt_put(struct mmt_template *t)
{
	kref_put(&t->ref, mmt_release);
}

static bool mmt_may_use(const struct mmt_template *t)
{
	return uid_eq(t->owner, current_euid()) || capable(CAP_SYS_ADMIN);
}

/* A referenced template the caller may use, or an ERR_PTR. */
static struct mmt_template *mmt_get(u32 id)
{
	struct mmt_template *t;

	if (id == 0 || id > INT_MAX)
		return ERR_PTR(-EINVAL);
	mutex_lock(&mmt_lock);
	t = idr_find(&mmt_idr, id);
	if (t)
		kref_get(&t->ref);
	mutex_unlock(&mmt_lock);
	if (!t)
		return ERR_PTR(-ENOENT);
	if (!mmt_may_use(t)) {
		mmt_put(t);
		return ERR_PTR(-EPERM);
	}
	return t;
}

/* ---- VMAs ---- */

static void mmt_vm_open(struct vm_area_struct *vma)
{
	struct mmt_template *t = vma->vm_private_data;

	kref_get(&t->ref);
	atomic_long_inc(&t->mappers);
}

static void mmt_vm_close(struct vm_area_struct *vma)
{
	struct mmt_template *t = vma->vm_private_data;

	atomic_long_dec(&t->mappers);
	mmt_put(t);
}

static vm_fault_t mmt_vm_fault(struct vm_fault *vmf)
{
	struct mmt_template *t = vmf->vma->vm_private_data;
	struct page *page;

	/* past the template's end, e.g. after mremap grew the mapping */
	if (vmf->pgoff >= t->npages)
		return VM_FAULT_SIGBUS;
	page = t->pages[vmf->pgoff];
	get_page(page);
	vmf->page = page;	/* the core maps it read-only, or copies it for a write (COW) */
	atomic_long_inc(&mmt_faults);
	return 0;
}

static const struct vm_operations_struct mmt_vm_ops = {
	.open = mmt_vm_open,
	.close = mmt_vm_close,
	.fault = mmt_vm_fault,
};

/*
 * Make `vma` map template `t` (the caller holds a reference; the VMA takes its own on success).
 * MMT_MAP_PREFAULT: insert every page table entry now (VM_MIXEDMAP + vm_insert_pages).
 */
static int mmt_map_vma(struct mmt_template *t, struct vm_area_struct *vma, u32 flags)
{
	unsigned long npages = vma_pages(vma);
	int ret;

	if (vma->vm_pgoff >= t->npages || npages > t->npages - vma->vm_pgoff)
		return -EINVAL;
	if (vma->vm_flags & VM_SHARED) {
		/* a writable shared map would write into the template every mapper sees */
		if (vma->vm_flags & VM_WRITE)
			return -EACCES;
		vma->vm_flags &= ~VM_MAYWRITE;
	}
	kref_get(&t->ref);
	vma->vm_private_data = t;
	vma->vm_ops = &mmt_vm_ops;
	atomic_long_inc(&t->mappers);
	atomic_long_inc(&mmt_maps);
	if (flags & MMT_MAP_PREFAULT) {
		unsigned long num = npages;

		vma->vm_flags |= VM_MIXEDMAP;
		/* entries get vm_page_prot: read-only for private maps, so writes still COW */
		ret = vm_insert_pages(vma, vma->vm_start, t->pages + vma->vm_pgoff, &num);
		atomic_long_add(npages - num, &mmt_prefaulted_pages);
		if (ret) {
			/* the core unmaps what was inserted but does not call close on failure */
			atomic_long_dec(&t->mappers);
			mmt_put(t);
			return ret;
		}
	}
	return 0;
}

/* mmap of /dev/mm_template: the template selected on this fd */
static int mmt_mmap(struct file *file, struct vm_area_struct *vma)
{
	struct mmt_fd *f = file->private_data;
	struct mmt_template *t;
	u32 flags;
	int ret;

	mutex_lock(&f->lock);
	t = f->sel;
	if (t)
		kref_get(&t->ref);
	flags = f->flags;
	mutex_unlock(&f->lock);
	if (!t)
		return -ENXIO;	/* nothing selected */
	ret = mmt_map_vma(t, vma, flags);
	mmt_put(t);
	return ret;
}

/* ---- ioctls ---- */

static long mmt_create(void __user *arg)
{
	struct mmt_create c;
	struct mmt_template *t;
	unsigned long i, npages;
	int id, ret;

	if (copy_from_user(&c, arg, sizeof(c)))
		return -EFAULT;
	if (c.flags || !c.len || c.len > MMT_MAX_BYTES || !PAGE_ALIGNED(c.addr) || !PAGE_ALIGNED(c.len))
		return -EINVAL;
	if (c.addr + c.len < c.addr || !access_ok((void __user *)(uintptr_t)c.addr, c.len))
		return -EFAULT;
	npages = c.len >> PAGE_SHIFT;

	t = kzalloc(sizeof(*t), GFP_KERNEL_ACCOUNT);
	if (!t)
		return -ENOMEM;
	t->pages = kvcalloc(npages, sizeof(*t->pages), GFP_KERNEL_ACCOUNT);
	if (!t->pages) {
		kfree(t);
		return -ENOMEM;
	}
	kref_init(&t->ref);
	t->owner = current_euid();
	t->npages = npages;
	ktime_get_real_ts64(&t->created);
	atomic_long_set(&t->mappers, 0);
	atomic_long_inc(&mmt_live_templates);
	atomic_long_inc(&mmt_created);	/* counts failed creates too: they are "freed" as well */
	atomic_long_add(npages, &mmt_live_pages);	/* mmt_release subtracts npages */

	for (i = 0; i < npages; i++) {
		struct page *page = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_NOWARN);

		if (!page) {
			ret = -ENOMEM;
			goto fail;
		}
		t->pages[i] = page;
		if (copy_from_user(page_address(page), (void __user *)(uintptr_t)(c.addr + i * PAGE_SIZE), PAGE_SIZE)) {
			ret = -EFAULT;
			goto fail;
		}
		if (fatal_signal_pending(current)) {
			ret = -EINTR;
			goto fail;
		}
		cond_resched();
	}

	mutex_lock(&mmt_lock);
	id = idr_alloc(&mmt_idr, t, 1, INT_MAX, GFP_KERNEL);
	if (id > 0)
		t->id = id;
	mutex_unlock(&mmt_lock);
	if (id < 0) {
		ret = id;
		goto fail;
	}
	c.id = id;
	if (copy_to_user(arg, &c, sizeof(c))) {
		/*
		 * The caller cannot learn the id: take it back, unless someone guessed it and deleted it
		 * meanwhile (then the table's reference is gone already and the id may be another's now).
		 */
		bool ours;

		mutex_lock(&mmt_lock);
		ours = idr_find(&mmt_idr, id) == t;
		if (ours) {
			idr_remove(&mmt_idr, id);
			WRITE_ONCE(t->deleted, true);
		}
		mutex_unlock(&mmt_lock);
		if (ours)
			mmt_put(t);
		return -EFAULT;
	}
	return 0;
fail:
	mmt_put(t);
	return ret;
}

static long mmt_select(struct mmt_fd *f, u32 id, u32 flags)
{
	struct mmt_template *t, *old;

	if (flags & ~MMT_MAP_FLAGS_ALL)
		return -EINVAL;
	t = mmt_get(id);
	if (IS_ERR(t))
		return PTR_ERR(t);
	mutex_lock(&f->lock);
	old = f->sel;
	f->sel = t;
	f->flags = flags;
	mutex_unlock(&f->lock);
	if (old)
		mmt_put(old);
	return 0;
}

static long mmt_query(void __user *arg)
{
	struct mmt_query q;
	struct mmt_template *t;
	u32 id;

	if (get_user(id, (u32 __user *)arg))
		return -EFAULT;
	t = mmt_get(id);
	if (IS_ERR(t))
		return PTR_ERR(t);
	memset(&q, 0, sizeof(q));
	q.id = id;
	q.owner_uid = from_kuid_munged(current_user_ns(), t->owner);
	q.pages = t->npages;
	q.mappers = atomic_long_read(&t->mappers);
	q.bytes_charged = (u64)t->npages << PAGE_SHIFT;
	q.deleted = READ_ONCE(t->deleted);
	mmt_put(t);
	return copy_to_user(arg, &q, sizeof(q)) ? -EFAULT : 0;
}

static long mmt_delete(void __user *arg)
{
	struct mmt_template *t;
	u32 id;

	if (get_user(id, (u32 __user *)arg))
		return -EFAULT;
	if (id == 0 || id > INT_MAX)
		return -EINVAL;
	mutex_lock(&mmt_lock);
	t = idr_find(&mmt_idr, id);
	if (!t) {
		mutex_unlock(&mmt_lock);
		return -ENOENT;
	}
	if (!mmt_may_use(t)) {
		mutex_unlock(&mmt_lock);
		return -EPERM;
	}
	idr_remove(&mmt_idr, id);
	WRITE_ONCE(t->deleted, true);
	mutex_unlock(&mmt_lock);
	mmt_put(t);	/* the table's reference: pages stay while mapped */
	return 0;
}

/* MAP_PID: a kthread adopts the target's mm and mmaps there (vm_mmap maps into current->mm). */
struct mmt_remote_map {
	struct file *file;
	struct mm_struct *mm;
	unsigned long addr, len, prot, off;
	unsigned long result;
	struct completion done;
};

static int mmt_remote_map_fn(void *arg)
{
	struct mmt_remote_map *m = arg;

	kthread_use_mm(m->mm);
	m->result = vm_mmap(m->file, m->addr, m->len, m->prot, MAP_PRIVATE | MAP_FIXED, m->off);
	kthread_unuse_mm(m->mm);
	complete(&m->done);
	return 0;
}

/* copy and check MAP_PID arguments (not the id: the caller resolves it) */
static long mmt_map_pid_args(struct mmt_map_pid *mp, void __user *arg)
{
	if (!capable(CAP_SYS_PTRACE))
		return -EPERM;
	if (copy_from_user(mp, arg, sizeof(*mp)))
		return -EFAULT;
	if (mp->pid <= 0 || (mp->prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC)) || !mp->len ||
	    !PAGE_ALIGNED(mp->addr) || !PAGE_ALIGNED(mp->len) || !PAGE_ALIGNED(mp->offset) ||
	    mp->addr + mp->len < mp->addr || mp->addr + mp->len > TASK_SIZE_MAX || mp->len > MMT_MAX_BYTES ||
	    mp->offset > MMT_MAX_BYTES || (mp->flags & ~MMT_MAP_FLAGS_ALL))
		return -EINVAL;
	return 0;
}

/* mmap `file` (which maps the template) into the stopped task mp->pid */
static long mmt_map_into_task(struct file *file, const struct mmt_map_pid *mp)
{
	struct mmt_remote_map m = {};
	struct task_struct *task, *kt;
	struct mm_struct *mm;
	long ret;

	rcu_read_lock();
	task = pid_task(find_vpid(mp->pid), PIDTYPE_PID);
	if (task)
		get_task_struct(task);
	rcu_read_unlock();
	if (!task)
		return -ESRCH;
	ret = -EBUSY;	/* mapping under a running task would race with its own use of the range */
	if (!task_is_stopped_or_traced(task))
		goto put_task;
	ret = -EINVAL;
	mm = get_task_mm(task);	/* NULL for kernel threads and exiting tasks */
	if (!mm)
		goto put_task;

	m.file = file;
	m.mm = mm;
	m.addr = mp->addr;
	m.len = mp->len;
	m.prot = mp->prot;
	m.off = mp->offset;
	init_completion(&m.done);
	kt = kthread_create(mmt_remote_map_fn, &m, "mmt_map");
	if (IS_ERR(kt)) {
		ret = PTR_ERR(kt);
		goto put_mm;
	}
	get_task_struct(kt);
	wake_up_process(kt);
	/* kthread_stop() before the thread ran would skip the function: wait for it first */
	wait_for_completion(&m.done);
	kthread_stop(kt);	/* and until it has exited (it runs module code until then) */
	put_task_struct(kt);
	ret = IS_ERR_VALUE(m.result) ? (long)m.result : 0;
put_mm:
	mmput(mm);
put_task:
	put_task_struct(task);
	return ret;
}

/* MAP_PID on /dev/mm_template: select mp.id on this fd, then map the device file */
static long mmt_map_pid(struct file *file, struct mmt_fd *f, void __user *arg)
{
	struct mmt_map_pid mp;
	long ret = mmt_map_pid_args(&mp, arg);

	if (ret)
		return ret;
	ret = mmt_select(f, mp.id, mp.flags);	/* also checks id and owner */
	if (ret)
		return ret;
	return mmt_map_into_task(file, &mp);
}

static long mmt_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct mmt_fd *f = file->private_data;
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case MMT_IOC_VERSION:
		return put_user((u32)MMT_ABI_VERSION, (u32 __user *)uarg);
	case MMT_IOC_CREATE:
		return mmt_create(uarg);
	case MMT_IOC_SELECT: {
		struct mmt_select s;

		if (copy_from_user(&s, uarg, sizeof(s)))
			return -EFAULT;
		return mmt_select(f, s.id, s.flags);
	}
	case MMT_IOC_QUERY:
		return mmt_query(uarg);
	case MMT_IOC_DELETE:
		return mmt_delete(uarg);
	case MMT_IOC_MAP_PID:
		return mmt_map_pid(file, f, uarg);
	default:
		return -ENOTTY;
	}
}

static int mmt_open(struct inode *inode, struct file *file)
{
	struct mmt_fd *f = kzalloc(sizeof(*f), GFP_KERNEL_ACCOUNT);

	if (!f)
		return -ENOMEM;
	mutex_init(&f->lock);
	file->private_data = f;
	return 0;
}

static int mmt_file_release(struct inode *inode, struct file *file)
{
	struct mmt_fd *f = file->private_data;

	if (f->sel)
		mmt_put(f->sel);
	kfree(f);
	return 0;
}

static const struct file_operations mmt_fops = {
	.owner = THIS_MODULE,	/* pins the module while an fd or a mapping (which holds the file) exists */
	.open = mmt_open,
	.release = mmt_file_release,
	.unlocked_ioctl = mmt_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.mmap = mmt_mmap,
	.llseek = noop_llseek,
};

static struct miscdevice mmt_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "mm_template",
	.fops = &mmt_fops,
	.mode = 0666,
};

/* ---- the mm_template filesystem: one read-only regular file per live template ----
 *
 * `mount -t mm_template none /run/mm_template` (one instance, however often mounted): then
 * /run/mm_template/<id> is template <id> as a file (owner: its creator, mode 0400, size: the
 * template's). mmap(MAP_PRIVATE) of it maps the template like the device does. Tools that know
 * files but not this device - CRIU above all - can so checkpoint a process whose memory is mapped
 * from a template (those pages are file pages, which CRIU does not copy into its images) and
 * restore it by mapping the file again: no template page is copied on restore.
 * A deleted template's file disappears; what is open or mapped stays valid (the file holds it).
 */
#define MMTFS_MAGIC 0x6d6d7466	/* "mmtf" */

static bool file_prefault = true;
module_param(file_prefault, bool, 0644);
MODULE_PARM_DESC(file_prefault, "mmap of a template file inserts every page table entry at once (0: one fault per page)");

/* a template file's file->private_data: its map flags */
static int mmtfs_open(struct inode *inode, struct file *file)
{
	file->private_data = (void *)(uintptr_t)(READ_ONCE(file_prefault) ? MMT_MAP_PREFAULT : 0);
	return 0;
}

static int mmtfs_mmap(struct file *file, struct vm_area_struct *vma)
{
	return mmt_map_vma(file_inode(file)->i_private, vma, (u32)(uintptr_t)file->private_data);
}

/* MAP_PID on a template file maps that file (so the target's maps name it); id must be the file's */
static long mmtfs_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct mmt_template *t = file_inode(file)->i_private;
	struct mmt_map_pid mp;
	long ret;

	switch (cmd) {
	case MMT_IOC_VERSION:
		return put_user((u32)MMT_ABI_VERSION, (u32 __user *)arg);
	case MMT_IOC_MAP_PID:
		ret = mmt_map_pid_args(&mp, (void __user *)arg);
		if (ret)
			return ret;
		if (mp.id != t->id)
			return -EINVAL;
		WRITE_ONCE(file->private_data, (void *)(uintptr_t)mp.flags);
		return mmt_map_into_task(file, &mp);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations mmtfs_file_fops = {
	.owner = THIS_MODULE,
	.open = mmtfs_open,
	.mmap = mmtfs_mmap,
	.unlocked_ioctl = mmtfs_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = generic_file_llseek,
};

/* a name in use (an open file pins it) stops resolving once its template is deleted */
static int mmtfs_d_revalidate(struct dentry *dentry, unsigned int flags)
{
	struct inode *inode;

	if (flags & LOOKUP_RCU)
		return -ECHILD;	/* i_private is only safe to follow with a reference */
	inode = d_inode(dentry);
	if (!inode || !S_ISREG(inode->i_mode))
		return !inode ? 0 : 1;	/* negative: look again */
	return !READ_ONCE(((struct mmt_template *)inode->i_private)->deleted);
}

/* unused dentries go at once: a lookup always sees the id table as it is now */
static const struct dentry_operations mmtfs_dops = {
	.d_revalidate = mmtfs_d_revalidate,
	.d_delete = always_delete_dentry,
};

static struct dentry *mmtfs_lookup(struct inode *dir, struct dentry *dentry, unsigned int flags)
{
	struct mmt_template *t = NULL;
	struct inode *inode;
	char canon[12];
	u32 id;

	/* only the canonical decimal name of a live id ("7", not "07" or "+7") */
	if (!kstrtou32(dentry->d_name.name, 10, &id) && id && id <= INT_MAX &&
	    snprintf(canon, sizeof(canon), "%u", id) == dentry->d_name.len &&
	    !memcmp(canon, dentry->d_name.name, dentry->d_name.len)) {
		mutex_lock(&mmt_lock);
		t = idr_find(&mmt_idr, id);
		if (t)
			kref_get(&t->ref);
		mutex_unlock(&mmt_lock);
	}
	if (!t) {
		d_add(dentry, NULL);
		return NULL;
	}
	inode = new_inode(dir->i_sb);
	if (!inode) {
		mmt_put(t);
		return ERR_PTR(-ENOMEM);
	}
	inode->i_ino = (unsigned long)id + 1;	/* 1 is the root */
	inode->i_mode = S_IFREG | 0400;
	inode->i_uid = t->owner;
	inode->i_gid = GLOBAL_ROOT_GID;
	inode->i_size = (loff_t)t->npages << PAGE_SHIFT;
	inode->i_atime = inode->i_mtime = inode->i_ctime = t->created;
	inode->i_fop = &mmtfs_file_fops;
	inode->i_private = t;	/* the reference taken above, dropped at evict */
	d_add(dentry, inode);
	return NULL;
}

/* ".", "..", then every live id (f_pos 2 + k: continue from id k + 1) */
static int mmtfs_readdir(struct file *file, struct dir_context *ctx)
{
	char name[12];
	int id;

	if (!dir_emit_dots(file, ctx))
		return 0;
	mutex_lock(&mmt_lock);
	for (id = ctx->pos - 1; idr_get_next(&mmt_idr, &id); id++) {
		int len = snprintf(name, sizeof(name), "%d", id);

		if (!dir_emit(ctx, name, len, (u64)id + 1, DT_REG))
			break;
		ctx->pos = (loff_t)id + 2;
	}
	mutex_unlock(&mmt_lock);
	return 0;
}

static const struct inode_operations mmtfs_dir_iops = {
	.lookup = mmtfs_lookup,
};

static const struct file_operations mmtfs_dir_fops = {
	.owner = THIS_MODULE,
	.iterate_shared = mmtfs_readdir,
	.read = generic_read_dir,
	.llseek = generic_file_llseek,
};

static void mmtfs_evict_inode(struct inode *inode)
{
	clear_inode(inode);
	if (S_ISREG(inode->i_mode) && inode->i_private)
		mmt_put(inode->i_private);
}

static const struct super_operations mmtfs_sops = {
	.statfs = simple_statfs,
	.drop_inode = generic_delete_inode,
	.evict_inode = mmtfs_evict_inode,
};

static int mmtfs_fill_super(struct super_block *sb, struct fs_context *fc)
{
	struct inode *root;

	sb->s_maxbytes = MAX_LFS_FILESIZE;
	sb->s_blocksize = PAGE_SIZE;
	sb->s_blocksize_bits = PAGE_SHIFT;
	sb->s_magic = MMTFS_MAGIC;
	sb->s_op = &mmtfs_sops;
	sb->s_d_op = &mmtfs_dops;
	sb->s_time_gran = 1;
	root = new_inode(sb);
	if (!root)
		return -ENOMEM;
	root->i_ino = 1;
	root->i_mode = S_IFDIR | 0755;
	root->i_atime = root->i_mtime = root->i_ctime = current_time(root);
	root->i_op = &mmtfs_dir_iops;
	root->i_fop = &mmtfs_dir_fops;
	set_nlink(root, 2);
	sb->s_root = d_make_root(root);
	return sb->s_root ? 0 : -ENOMEM;
}

static int mmtfs_get_tree(struct fs_context *fc)
{
	return get_tree_single(fc, mmtfs_fill_super);
}

static const struct fs_context_operations mmtfs_context_ops = {
	.get_tree = mmtfs_get_tree,
};

static int mmtfs_init_fs_context(struct fs_context *fc)
{
	fc->ops = &mmtfs_context_ops;
	return 0;
}

static struct file_system_type mmtfs_type = {
	.owner = THIS_MODULE,	/* rmmod is refused while mounted */
	.name = "mm_template",
	.init_fs_context = mmtfs_init_fs_context,
	.kill_sb = kill_anon_super,
};

/* ---- debugfs: /sys/kernel/debug/mm_template/{stats,templates} ---- */

static int mmt_stats_show(struct seq_file *s, void *unused)
{
	seq_printf(s, "abi_version %d\n", MMT_ABI_VERSION);
	seq_printf(s, "templates_live %ld\n", atomic_long_read(&mmt_live_templates));
	seq_printf(s, "pages_live %ld\n", atomic_long_read(&mmt_live_pages));
	seq_printf(s, "bytes_charged %ld\n", atomic_long_read(&mmt_live_pages) << PAGE_SHIFT);
	seq_printf(s, "templates_created %ld\n", atomic_long_read(&mmt_created));
	seq_printf(s, "templates_freed %ld\n", atomic_long_read(&mmt_freed));
	seq_printf(s, "maps %ld\n", atomic_long_read(&mmt_maps));
	seq_printf(s, "faults %ld\n", atomic_long_read(&mmt_faults));
	seq_printf(s, "prefaulted_pages %ld\n", atomic_long_read(&mmt_prefaulted_pages));
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(mmt_stats);

static int mmt_templates_show(struct seq_file *s, void *unused)
{
	struct mmt_template *t;
	int id;

	seq_puts(s, "id owner_uid pages mappers\n");
	mutex_lock(&mmt_lock);
	idr_for_each_entry(&mmt_idr, t, id)
		seq_printf(s, "%d %u %lu %ld\n", id, from_kuid_munged(&init_user_ns, t->owner),
			   t->npages, atomic_long_read(&t->mappers));
	mutex_unlock(&mmt_lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(mmt_templates);

static int __init mmt_init(void)
{
	int ret = misc_register(&mmt_misc);

	if (ret)
		return ret;
	ret = register_filesystem(&mmtfs_type);
	if (ret) {
		misc_deregister(&mmt_misc);
		return ret;
	}
	mmt_debugfs = debugfs_create_dir("mm_template", NULL);
	debugfs_create_file("stats", 0444, mmt_debugfs, NULL, &mmt_stats_fops);
	debugfs_create_file("templates", 0444, mmt_debugfs, NULL, &mmt_templates_fops);
	pr_info("mm_template: ABI %d, /dev/mm_template and filesystem mm_template ready\n", MMT_ABI_VERSION);
	return 0;
}

static void __exit mmt_exit(void)
{
	struct mmt_template *t;
	int id;

	debugfs_remove_recursive(mmt_debugfs);
	unregister_filesystem(&mmtfs_type);
	misc_deregister(&mmt_misc);
	/* no fd and no mapping is left (fops.owner): only the table's references remain */
	idr_for_each_entry(&mmt_idr, t, id)
		mmt_put(t);
	idr_destroy(&mmt_idr);
}

module_init(mmt_init);
module_exit(mmt_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Copy-on-write memory templates shared by many processes");
MODULE_AUTHOR("trenv");
