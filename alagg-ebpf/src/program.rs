//! The XDP entry point and its maps. See the crate documentation for the behaviour.

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray, XskMap},
    programs::XdpContext,
};

use alagg_common::{
    Action, COUNTERS_LEN, Counter, DEFAULT_ETHERTYPE, ETH_HDR_LEN, LinkConfig, XSKS_MAX_ENTRIES,
};

/// Most interfaces one host serves as links.
const LINKS_MAX_ENTRIES: u32 = 64;

/// AF_XDP sockets, at `LinkConfig::xsk_base + rx_queue_index`.
#[map(name = "XSKS")]
static XSKS: XskMap = XskMap::with_max_entries(XSKS_MAX_ENTRIES, 0);

/// Per-interface configuration keyed by ifindex, written by the loader.
#[map(name = "LINKS")]
static LINKS: HashMap<u32, LinkConfig> = HashMap::with_max_entries(LINKS_MAX_ENTRIES, 0);

/// Frames and bytes per [`Action`], per CPU.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[xdp]
pub fn alagg(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (action, verdict) = classify(&ctx);
    count(action, len);
    verdict
}

/// Decides what happens to the frame in `ctx`: the counter to bump and the XDP verdict.
#[inline(always)]
fn classify(ctx: &XdpContext) -> (Action, u32) {
    let Some(ethertype) = ethertype(ctx) else {
        return (Action::PassedShort, xdp_action::XDP_PASS);
    };
    let ifindex = ctx.ingress_ifindex() as u32;
    let config = LINKS.get_ptr(ifindex);
    // SAFETY: the pointer comes from a successful map lookup and is valid for the duration of
    // this program run; `LinkConfig` is plain data.
    let config = config.map(|ptr| unsafe { *ptr });
    let expected = config.map_or(DEFAULT_ETHERTYPE, |c| c.ethertype);
    if ethertype != expected {
        return (Action::PassedOther, xdp_action::XDP_PASS);
    }
    let Some(config) = config else {
        return (Action::PassedNoSocket, xdp_action::XDP_PASS);
    };
    let slot = config.xsk_base.wrapping_add(ctx.rx_queue_index());
    // The low bits of the flags are the verdict when no socket sits in the slot.
    match XSKS.redirect(slot, u64::from(xdp_action::XDP_PASS)) {
        Ok(verdict) => (Action::Redirected, verdict),
        Err(verdict) => (Action::PassedNoSocket, verdict),
    }
}

/// The frame's ethertype in host order, or `None` when the frame is shorter than an Ethernet
/// header. The bounds check is the one the verifier needs before any packet read.
#[inline(always)]
fn ethertype(ctx: &XdpContext) -> Option<u16> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + ETH_HDR_LEN > end {
        return None;
    }
    let ptr = (start + 12) as *const [u8; 2];
    // SAFETY: `start + ETH_HDR_LEN <= end` was checked above, so the two ethertype bytes at
    // offset 12..14 lie inside the packet; `[u8; 2]` has no alignment requirement.
    let bytes = unsafe { ptr.read() };
    Some(u16::from_be_bytes(bytes))
}

#[inline(always)]
fn count(action: Action, len: u64) {
    if let Some(counter) = COUNTERS.get_ptr_mut(action as u32) {
        // SAFETY: the pointer comes from a successful lookup in a per-CPU array: it points at
        // this CPU's slot, which nothing else writes while this program runs on this CPU.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += len;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so no loaded program
    // ever gets here.
    unsafe { core::hint::unreachable_unchecked() }
}
