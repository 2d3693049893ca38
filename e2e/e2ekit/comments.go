package e2ekit

import "strings"

// What Atlantis says on a pull request, as upstream and the queue's notifier
// (server/core/locking/enhanced/queue/notifier.go) word it.

// IsPlanResult is upstream's answer to a plan, whatever came of it.
func IsPlanResult(body string) bool { return strings.Contains(body, "Ran Plan for") }

// IsPlanned is a plan that ran: the lock was granted and Terraform planned.
func IsPlanned(body string) bool {
	return IsPlanResult(body) && strings.Contains(body, "terraform_data.") && !IsLockedOut(body) &&
		!strings.Contains(body, "Plan Error") && !strings.Contains(body, "Plan Failed")
}

// IsLockedOut is upstream's answer to a pull that finds the project locked.
func IsLockedOut(body string) bool {
	return strings.Contains(body, "This project is currently locked by an unapplied plan from pull")
}

// IsUnlocked confirms `atlantis unlock`.
func IsUnlocked(body string) bool {
	return strings.Contains(body, "All Atlantis locks for this PR have been unlocked and plans discarded")
}

// IsApplyResult is upstream's answer to an apply, whatever came of it.
func IsApplyResult(body string) bool { return strings.Contains(body, "Ran Apply for") }

// IsNotRun is the command lease's refusal (server/command_lease.go).
func IsNotRun(body string) bool { return strings.HasPrefix(body, "**Command not run**") }

// IsQueuePosition tells a pull its places in lock queues.
func IsQueuePosition(body string) bool { return strings.HasPrefix(body, "**Lock queue position**") }

// IsHandedOver tells a pull it was handed a lock it queued for.
func IsHandedOver(body string) bool { return strings.HasPrefix(body, "**Lock handed over**") }
