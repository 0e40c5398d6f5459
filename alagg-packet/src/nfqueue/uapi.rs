//! Constants of the kernel's netlink and nfnetlink_queue UAPI, named as in the headers
//! (`include/uapi/linux/netlink.h`, `netfilter/nfnetlink.h`, `netfilter/nfnetlink_queue.h`,
//! `netfilter.h`).

// include/uapi/linux/netlink.h
pub const NLMSG_HDRLEN: usize = 16;
pub const NLA_HDRLEN: usize = 4;
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_ACK: u16 = 0x04;
/// `~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)`.
pub const NLA_TYPE_MASK: u16 = 0x3fff;
pub const SOL_NETLINK: i32 = 270;
pub const NETLINK_NO_ENOBUFS: i32 = 5;
pub const NETLINK_CAP_ACK: i32 = 10;

// include/uapi/linux/netfilter/nfnetlink.h
pub const NFNETLINK_V0: u8 = 0;
pub const NFNL_SUBSYS_QUEUE: u16 = 3;
/// `struct nfgenmsg`: family, version, big-endian resource id (the queue number).
pub const NFGENMSG_LEN: usize = 4;

// include/uapi/linux/netfilter/nfnetlink_queue.h
pub const NFQNL_MSG_PACKET: u16 = 0;
pub const NFQNL_MSG_CONFIG: u16 = 2;
pub const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

pub const NFQA_PACKET_HDR: u16 = 1;
pub const NFQA_VERDICT_HDR: u16 = 2;
pub const NFQA_PAYLOAD: u16 = 10;
pub const NFQA_CAP_LEN: u16 = 13;
pub const NFQA_SKB_INFO: u16 = 14;
/// `struct nfqnl_msg_packet_hdr` (packed): be32 packet_id, be16 hw_protocol, u8 hook.
pub const PACKET_HDR_LEN: usize = 7;

pub const NFQA_SKB_CSUMNOTREADY: u32 = 1 << 0;
pub const NFQA_SKB_GSO: u32 = 1 << 1;

pub const NFQNL_CFG_CMD_BIND: u8 = 1;
pub const NFQNL_CFG_CMD_UNBIND: u8 = 2;
pub const NFQNL_COPY_PACKET: u8 = 2;

pub const NFQA_CFG_CMD: u16 = 1;
pub const NFQA_CFG_PARAMS: u16 = 2;
pub const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
pub const NFQA_CFG_MASK: u16 = 4;
pub const NFQA_CFG_FLAGS: u16 = 5;
pub const NFQA_CFG_F_FAIL_OPEN: u32 = 1 << 0;
pub const NFQA_CFG_F_GSO: u32 = 1 << 2;

// include/uapi/linux/netfilter.h
pub const NF_DROP: u32 = 0;
