"""Receive queues from /proc/net/udp: captured text, then a real socket on loopback."""

import os
import socket
import subprocess
import sys

import pytest

from eko_bench import udp_queues
from eko_bench.udp_queues import QueueSample, UdpSocket

# /proc/net/udp as Linux 6.x prints it (trailing spaces included): the server's RTP socket
# 30000 (0x7530) with three 172-byte datagrams waiting (3 x 832 bytes charged), its RTCP
# socket 30001 empty, a socket at 30002 with 0x1A00 bytes waiting and 5 drops, and one
# outside the range (0xA1B2 = 41394) with data waiting.
CAPTURED_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            
  305: 0100007F:7530 00000000:0000 07 00000000:000009C0 00:00000000 00000000     0        0 41001 2 00000000abeb0cf1 0         
  306: 0100007F:7531 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 41002 2 0000000012345678 0         
  307: 0100007F:7532 0100007F:4E20 01 00000000:00001A00 00:00000000 00000000  1000        0 41003 2 00000000deadbeef 5         
 1786: 0100007F:A1B2 00000000:0000 07 00000000:00000340 00:00000000 00000000     0        0 16258 2 00000000abeb0cf1 0         
"""

# /proc/net/udp6: 32-hex-digit addresses (::1 here), the same fields after them.
CAPTURED_UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  512: 00000000000000000000000001000000:7534 00000000000000000000000000000000:0000 07 00000000:00000680 00:00000000 00000000     0        0 41004 2 00000000cafef00d 0
"""


def test_parses_the_kernels_lines_ipv4_and_ipv6():
    assert udp_queues.parse_proc_net_udp(CAPTURED_UDP) == [
        UdpSocket(local_port=30000, rx_queue=2496, drops=0, inode=41001),
        UdpSocket(local_port=30001, rx_queue=0, drops=0, inode=41002),
        UdpSocket(local_port=30002, rx_queue=6656, drops=5, inode=41003),
        UdpSocket(local_port=41394, rx_queue=832, drops=0, inode=16258),
    ]
    assert udp_queues.parse_proc_net_udp(CAPTURED_UDP6) == [
        UdpSocket(local_port=30004, rx_queue=1664, drops=0, inode=41004)]


def test_a_kernel_without_the_drops_column_counts_none():
    line = "  305: 0100007F:7530 00000000:0000 07 00000000:000009C0 00:00000000 00000000     0        0 41001 2 00000000abeb0cf1\n"
    assert udp_queues.parse_proc_net_udp(line) == [UdpSocket(local_port=30000, rx_queue=2496, drops=0, inode=41001)]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("  305: 0100007F:7530 00000000:0000 07\n",
         "unrecognised /proc/net/udp line (too few fields): '305: 0100007F:7530 00000000:0000 07'"),
        ("  305: 0100007F:ZZZZ 00000000:0000 07 00000000:000009C0 00:00000000 00000000 0 0 41001 2 0 0\n",
         "unrecognised /proc/net/udp line (invalid literal for int() with base 16: 'ZZZZ'):"
         " '305: 0100007F:ZZZZ 00000000:0000 07 00000000:000009C0 00:00000000 00000000 0 0 41001 2 0 0'"),
        ("  305: 0100007F:7530 00000000:0000 07 000009C0 00:00000000 00000000 0 0 41001 2 0 0\n",
         "unrecognised /proc/net/udp line (no colon in the address or the queues):"
         " '305: 0100007F:7530 00000000:0000 07 000009C0 00:00000000 00000000 0 0 41001 2 0 0'"),
    ],
)
def test_a_line_not_in_the_kernels_format_is_named(line, error):
    with pytest.raises(ValueError) as raised:
        udp_queues.parse_proc_net_udp(line)
    assert str(raised.value) == error


@pytest.mark.parametrize(
    ("ports", "inodes", "exclude", "expected"),
    [
        # the range: four sockets, the one at 41394 left out
        (range(30000, 40000), None, (), QueueSample(sockets=4, non_empty=3, total_bytes=2496 + 6656 + 1664,
                                                   largest_bytes=6656, drops=5)),
        # only the sockets a process holds
        (range(30000, 40000), {41001, 41002}, (), QueueSample(sockets=2, non_empty=1, total_bytes=2496,
                                                             largest_bytes=2496, drops=0)),
        # a port inside the range left out (as a SIP socket is)
        (range(30000, 40000), None, {30002}, QueueSample(sockets=3, non_empty=2, total_bytes=2496 + 1664,
                                                        largest_bytes=2496, drops=0)),
        (range(20000, 30000), None, (), QueueSample(sockets=0, non_empty=0, total_bytes=0, largest_bytes=0, drops=0)),
    ],
)
def test_summarise_the_sockets_of_a_range(ports, inodes, exclude, expected):
    sockets = udp_queues.parse_proc_net_udp(CAPTURED_UDP) + udp_queues.parse_proc_net_udp(CAPTURED_UDP6)
    assert udp_queues.summarise(sockets, ports=ports, inodes=inodes, exclude_ports=exclude) == expected


def test_the_worst_of_two_looks_takes_each_figure_from_either():
    first = QueueSample(sockets=10, non_empty=1, total_bytes=5000, largest_bytes=4000, drops=0)
    later = QueueSample(sockets=8, non_empty=3, total_bytes=3000, largest_bytes=1000, drops=2)
    assert first.larger(later) == QueueSample(sockets=10, non_empty=3, total_bytes=5000, largest_bytes=4000, drops=2)


def test_sees_datagrams_waiting_on_a_real_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reader, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        reader.bind(("127.0.0.1", 0))
        port = reader.getsockname()[1]
        ports = range(port, port + 1)
        ours = udp_queues.socket_inodes(os.getpid())
        assert os.fstat(reader.fileno()).st_ino in ours
        assert udp_queues.sample(ports, inodes=ours) == QueueSample(
            sockets=1, non_empty=0, total_bytes=0, largest_bytes=0, drops=0)
        for _ in range(3):
            sender.sendto(bytes(172), ("127.0.0.1", port))  # loopback: queued before sendto returns
        found = udp_queues.sample(ports, inodes=ours)
        assert (found.sockets, found.non_empty, found.drops) == (1, 1, 0)
        assert found.total_bytes == found.largest_bytes >= 3 * 172  # the buffers charged, not just the payload
        assert udp_queues.sample(ports) == found  # by port alone, the same socket
        assert udp_queues.sample(ports, inodes=frozenset()).sockets == 0  # another process's sockets
        assert udp_queues.sample(ports, exclude_ports={port}).sockets == 0


def test_a_process_that_has_gone_has_no_sockets():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True, timeout=30)
    gone = int(child.stdout)
    assert udp_queues.socket_inodes(gone) is None
