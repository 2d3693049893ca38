package backends

import (
	"strconv"
	"sync"
)

// clusterSlots is the number of hash slots in Redis Cluster.
const clusterSlots = 16384

// keySlot is the Redis Cluster hash slot of key: CRC16 (XMODEM) of its hash
// tag, modulo 16384.
func keySlot(key string) int {
	return int(crc16(hashTag(key)) % clusterSlots)
}

var (
	slotTagsOnce sync.Once
	slotTags     []string
)

// slotTag returns a short brace-free string that hashes to slot. Every replica
// must derive the same key names, so the table is built deterministically:
// the first base-36 counter value that lands in each slot.
func slotTag(slot int) string {
	slotTagsOnce.Do(func() {
		slotTags = make([]string, clusterSlots)
		for i, found := 0, 0; found < clusterSlots; i++ {
			s := strconv.FormatInt(int64(i), 36)
			if n := crc16(s) % clusterSlots; slotTags[n] == "" {
				slotTags[n] = s
				found++
			}
		}
	})
	return slotTags[slot]
}

var crc16Table = func() [256]uint16 {
	var t [256]uint16
	for i := range t {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}()

// crc16 is CRC-16/XMODEM, the checksum Redis Cluster uses for key slots.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^s[i]]
	}
	return crc
}
