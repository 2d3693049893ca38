package deadlock

// NewMemoryClaimsAt is NewMemoryClaims on the clock now.
var NewMemoryClaimsAt = newMemoryClaims
